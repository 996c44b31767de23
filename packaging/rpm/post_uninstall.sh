# keel .rpm %postun: reloads systemd; on upgrade restarts keel.service if it was running (the
# store migrates itself on start). /var/lib/keel is kept on erase: delete it by hand to drop the
# data (rpm has no purge).
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart keel.service || :
    fi
fi
exit 0
