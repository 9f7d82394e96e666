# edgewise-ratelimit (built from this workspace) on an empty base with the glibc files it
# links, and the backend binary as a shell-free health probe. Staged by `cargo xtask images`.
FROM scratch
COPY base/ /
COPY tools/ /
ENTRYPOINT ["/usr/local/bin/edgewise-ratelimit"]
