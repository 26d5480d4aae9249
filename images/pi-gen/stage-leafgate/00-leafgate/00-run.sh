#!/bin/bash -e
# pi-gen, on the build host (cwd: this directory): copy leafgate's wheel, units
# and default configuration into the image. The wheel is built beforehand:
#   python -m build --wheel --outdir images/pi-gen/stage-leafgate/00-leafgate/files/
shopt -s nullglob
wheels=(files/leafgate-*.whl)
if [ "${#wheels[@]}" -ne 1 ]; then
    echo "00-leafgate: expected one files/leafgate-*.whl, found ${#wheels[@]}" >&2
    exit 1
fi
install -d "${ROOTFS_DIR}/opt/leafgate-dist" "${ROOTFS_DIR}/etc/leafgate"
install -m 0644 "${wheels[0]}" "${ROOTFS_DIR}/opt/leafgate-dist/"
install -m 0644 files/leafgate.toml "${ROOTFS_DIR}/opt/leafgate-dist/leafgate.toml"
install -m 0644 files/leafgate.service "${ROOTFS_DIR}/etc/systemd/system/leafgate.service"
install -m 0644 files/leafgate-firstboot.service \
    "${ROOTFS_DIR}/etc/systemd/system/leafgate-firstboot.service"
install -m 0755 files/leafgate-firstboot "${ROOTFS_DIR}/usr/local/sbin/leafgate-firstboot"
install -D -m 0644 files/serial.conf \
    "${ROOTFS_DIR}/etc/systemd/system/leafgate.service.d/serial.conf"
