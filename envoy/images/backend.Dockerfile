# The Edgewise test backend (built from this workspace) on an empty base with the glibc files
# it links. Staged by `cargo xtask images`.
FROM scratch
COPY base/ /
COPY tools/ /
ENTRYPOINT ["/usr/local/bin/edgewise-backend"]
