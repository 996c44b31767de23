# keel .rpm %post: creates the keel user and /var/lib/keel; on first install enables and starts
# keel.service and says where the admin key and the dashboard are. (Upgrades restart the service
# in %postun, after the old files are gone.) systemctl calls are guarded so that installing without
# a running systemd (chroot, container) works.
if ! getent passwd keel >/dev/null; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers keel.conf || :
    fi
    if ! getent passwd keel >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/keel --no-create-home \
            --shell /sbin/nologin --comment "keel reliability appliance" keel
    fi
fi
if [ ! -d /var/lib/keel ]; then
    install -d -o keel -g keel -m 0700 /var/lib/keel
fi
if [ "$1" -eq 1 ]; then
    started=no
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload || :
        if systemctl enable --now keel.service; then started=yes; fi
    fi
    echo "keel: configuration in /etc/keel/keel.toml, data in /var/lib/keel"
    echo "keel: the initial admin key is written on first start to /var/lib/keel/initial-admin-key"
    echo "      (read it with: sudo cat /var/lib/keel/initial-admin-key; store it safely, then delete the file)"
    echo "keel: dashboard at http://127.0.0.1:8080/admin (the address is server.listen in /etc/keel/keel.toml)"
    if [ "$started" = no ]; then
        echo "keel: keel.service was not started (is systemd running?); start it with: systemctl enable --now keel"
    fi
    echo "keel: check the setup with: sudo KEEL_DATA_DIR=/var/lib/keel keel doctor --config /etc/keel/keel.toml"
fi
exit 0
