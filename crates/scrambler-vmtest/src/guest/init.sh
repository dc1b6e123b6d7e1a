#!/bin/busybox sh
# scrambler-vmtest guest init (PID 1, busybox sh from the initramfs).
#
# Mounts the host's root file system read-only over virtio-9p, puts a tmpfs overlay on
# top (so the guest may write anywhere; nothing reaches the host), mounts the pseudo
# file systems and a fresh /tmp and /var/tmp (/scrambler/tmp.sh: the host paths the run
# needs there, e.g. a checkout under /tmp, are bound back in), chroots into it to run /scrambler/prepare.sh and
# /scrambler/run-test.sh (written per run by the host), prints
# the exit marker and powers off. Any setup failure prints the marker with status 125.
B=/bin/busybox
export PATH=/sbin:/bin
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
. /scrambler/env.sh
N=/newroot

finish() {
    echo
    echo "SCRAMBLER-VM-EXIT $SCRAMBLER_NONCE $1"
    $B sync
    $B poweroff -f
    $B sleep 5
    echo o >/proc/sysrq-trigger
}
die() {
    echo "scrambler-vmtest: guest setup failed: $*"
    finish 125
}

for m in $(cat /scrambler/modules); do
    $B insmod "/lib/modules/$m.ko" || die "insmod $m"
done

$B mkdir -p /host /rw $N
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000 hostroot /host \
    || die "mount host root over 9p"
$B mount -t tmpfs -o mode=0755 rw /rw && $B mkdir -p /rw/upper /rw/work || die "mount tmpfs /rw"
$B mount -t overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work root $N \
    || die "mount overlay root"
$B mount -t proc proc $N/proc || die "mount /proc"
$B mount -t sysfs sysfs $N/sys || die "mount /sys"
$B mount -t devtmpfs dev $N/dev || die "mount /dev"
$B mkdir -p $N/dev/pts $N/dev/shm
$B mount -t devpts -o newinstance,ptmxmode=0666 devpts $N/dev/pts || die "mount /dev/pts"
$B mount -t tmpfs -o mode=1777 shm $N/dev/shm || die "mount /dev/shm"
$B mount -t tmpfs -o mode=0755 run $N/run || die "mount /run"
. /scrambler/tmp.sh
$B mkdir -p $N/dev/hugepages $N/dev/mqueue
$B mount -t hugetlbfs hugetlbfs $N/dev/hugepages
$B mount -t mqueue mqueue $N/dev/mqueue
[ -d $N/sys/fs/cgroup ] && $B mount -t cgroup2 cgroup2 $N/sys/fs/cgroup
[ -d $N/sys/fs/bpf ] && $B mount -t bpf bpf $N/sys/fs/bpf
[ -d $N/sys/kernel/debug ] && $B mount -t debugfs debugfs $N/sys/kernel/debug

# The kernel runs its module loader in the initramfs root: forward to the host's
# modprobe (kmod) with the full /lib/modules tree inside the chroot.
echo /sbin/modprobe >/proc/sys/kernel/modprobe
# Static device nodes of not-yet-loaded drivers (/dev/net/tun, /dev/fuse, …): opening
# one makes the kernel load its module, as systemd's kmod-static-nodes arranges.
while read -r mod dev spec; do
    case "$mod" in "#"* | "") continue ;; esac
    [ -e "$N/dev/$dev" ] && continue
    maj=${spec#?}; min=${maj#*:}; maj=${maj%%:*}
    $B mkdir -p "$($B dirname "$N/dev/$dev")"
    $B mknod "$N/dev/$dev" "${spec%"${spec#?}"}" "$maj" "$min"
done <"$N/lib/modules/$($B uname -r)/modules.devname"
$B hostname scrambler-vm
$B ip link set lo up

# Tools: busybox applets the host may lack go last in PATH; the caller's binaries first.
V=$N/run/scrambler-vm
$B mkdir -p $V/fallback $V/path
$B cp $B $V/fallback/busybox || die "copy busybox"
for a in ping ping6 nc traceroute; do $B ln -s busybox $V/fallback/$a; done
$B cp /scrambler/prepare.sh /scrambler/run-test.sh $V/ || die "copy guest scripts"

$B chroot $N /run/scrambler-vm/fallback/busybox sh /run/scrambler-vm/prepare.sh \
    || die "prepare.sh (modules, files)"
# A syslog sink (/dev/log, into a file): without one, daemons' syslog falls back to the
# console (LOG_CONS) and their lines split libtest's result lines, e.g. VPP's "received
# signal SIGTERM" as a test stops it.
$B chroot $N /run/scrambler-vm/fallback/busybox syslogd -O /run/scrambler-vm/syslog \
    || die "start syslogd"
echo "scrambler-vmtest: guest ready after $($B cut -d' ' -f1 /proc/uptime) s of uptime"
$B chroot $N /run/scrambler-vm/fallback/busybox sh /run/scrambler-vm/run-test.sh
finish $?
