"""The side-by-side benchmark: clusterdns against dnsmasq and unbound under dnsperf (``python -m bench.run``)."""
