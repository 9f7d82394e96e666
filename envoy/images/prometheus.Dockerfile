# Prometheus from Debian's prometheus package on an empty base with the files it links, an
# empty data directory, and the backend binary as a shell-free health probe. Staged by
# `cargo xtask images`. Its configuration and the Edgewise alert rules are mounted by
# docker-compose.yml (envoy/compose/prometheus.yml, deploy/prometheus/alerts.yml).
FROM scratch
COPY base/ /
COPY tools/ /
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus", "--web.listen-address=0.0.0.0:9090", "--storage.tsdb.retention.time=1d"]
