# keel .rpm %preun: on erase (not upgrade) stops and disables keel.service.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl disable --now keel.service || :
fi
exit 0
