#!/bin/busybox sh
# Kernel module requests (request_module) go to the host's modprobe inside the guest root.
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
