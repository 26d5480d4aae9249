#!/bin/bash -e
# pi-gen, inside the image: leafgate and its dependencies (from PyPI) in a
# virtualenv, the default configuration, the units enabled.
python3 -m venv /opt/leafgate
/opt/leafgate/bin/pip install --no-cache-dir --disable-pip-version-check \
    /opt/leafgate-dist/leafgate-*.whl
install -D -m 0644 /opt/leafgate-dist/leafgate.toml /opt/leafgate/share/leafgate.toml
rm -rf /opt/leafgate-dist
/opt/leafgate/bin/leafgate check-config -c /opt/leafgate/share/leafgate.toml >/dev/null
systemctl enable leafgate-firstboot.service leafgate.service
