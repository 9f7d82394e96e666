# Redis from Debian's redis-server package (redis-server and redis-cli, with the files they
# link) on an empty base. Staged by `cargo xtask images`. No persistence: counters only.
FROM scratch
COPY base/ /
ENTRYPOINT ["/usr/bin/redis-server"]
CMD ["--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no"]
