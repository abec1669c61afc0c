# clusterdns image: drops into the kube-dns Deployment in place of coredns/coredns.
#
#   docker build -t clusterdns:0.1.0 .
#
# Deployed by manifests/ (docs/deploy.md); tests/test_deploy.py checks this file against them.
# Builder and final stage use the same base, so the venv's interpreter symlinks
# (/opt/venv/bin/python -> /usr/local/bin/python) resolve to the same binary in both.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
WORKDIR /src
# .dockerignore keeps .git, .venv, tests, docs and bench results out of the context.
COPY . .
# This project with the [fast] extra (uvloop), from wheels; then the installers are removed
# so that only the runtime is copied on.
RUN /opt/venv/bin/pip install --no-cache-dir '.[fast]' \
 && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}
COPY --from=builder /opt/venv /opt/venv
# Binding port 53 without root. The capability goes on the interpreter as a file capability;
# it must be the real binary (readlink -f, e.g. /usr/local/bin/python3.11), because the kernel
# reads the capability from the file it finally executes, never from a symlink such as
# /opt/venv/bin/python. It is set here, in the final stage, in the same RUN that installs and
# purges libcap2-bin: setting it in the builder and copying the binary over relies on COPY
# keeping the security.capability xattr, which not every builder does, and would overwrite
# the base image's interpreter. No layer of this image keeps setcap.
# In the pod, `allowPrivilegeEscalation: false` (no_new_privs) caps file capabilities at what
# the container was given, so the Deployment must add NET_BIND_SERVICE (it does).
# The base image's own pip/setuptools/wheel go too: the venv does not use them.
RUN set -eux; \
    apt-get update; \
    apt-get install --yes --no-install-recommends libcap2-bin; \
    python_bin="$(readlink -f /opt/venv/bin/python)"; \
    setcap cap_net_bind_service=+ep "$python_bin"; \
    getcap "$python_bin" | grep -q cap_net_bind_service; \
    apt-get purge --yes --auto-remove libcap2-bin; \
    rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log; \
    python -m pip uninstall --yes pip setuptools wheel; \
    groupadd --system --gid 65532 clusterdns; \
    useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin clusterdns

# No .pyc writes at run time (the root filesystem is read-only in the pod); logs unbuffered.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Same uid/gid as runAsUser/runAsGroup in manifests/deployment.yaml.
USER 65532:65532
# DNS, metrics (prometheus), liveness (health), readiness (ready).
EXPOSE 53/udp 53/tcp 9153 8080 8181
ENTRYPOINT ["clusterdns"]
# The kube-dns Deployment passes the same arguments.
CMD ["-conf", "/etc/coredns/Corefile"]
