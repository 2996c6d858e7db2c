#!/bin/busybox sh
# PID 1 of the kernel lane's guest (built into the initramfs by tools/kernel/run.py).
#
# Loads the modules listed in /modules.load (dependency order, computed on the
# host), mounts the host's / read-only over virtio-9p as the lower layer of an
# overlay on tmpfs, gives it fresh proc/sys/dev/devpts/shm/cgroup2, brings lo
# up, tunes SCTP's retransmission timers, and runs /run/lane/job.sh (written by
# the host) chrooted there. stdout, stderr and the exit status go to the "lane"
# 9p share (read-write). Then it reboots: QEMU runs with -no-reboot and exits.
/bin/busybox mkdir -p /bin /proc /sys /dev /mnt/host /mnt/rw /mnt/lane /newroot
/bin/busybox --install -s /bin
export PATH=/bin

lane_ok=
fail() {
    echo "lane init: $*" >&2
    if [ -n "$lane_ok" ]; then
        echo "lane init: $*" >> /mnt/lane/init.log
        echo 125 > /mnt/lane/status
    fi
    sync
    reboot -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

for m in $(cat /modules.load); do
    insmod "/lib/modules/$m.ko" || echo "lane init: insmod $m failed" >&2
done

mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 lane /mnt/lane || fail "cannot mount the lane share"
lane_ok=1
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,cache=loose,ro hostroot /mnt/host \
    || fail "cannot mount the host's / over 9p"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw || fail "cannot mount tmpfs"
mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot \
    || fail "cannot mount the overlay"

r=/newroot
mount -t proc proc $r/proc || fail "proc"
mount -t sysfs sysfs $r/sys || fail "sysfs"
mount -t devtmpfs devtmpfs $r/dev || fail "devtmpfs"
mkdir -p $r/dev/pts $r/dev/shm $r/run/lane
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts || fail "devpts"
mount -t tmpfs -o mode=1777 shm $r/dev/shm || fail "shm"
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null
mount -o bind /mnt/lane $r/run/lane || fail "bind the lane share"

ip link set lo up || fail "lo up"
# Short SCTP retransmission timers: a discarded window probe otherwise stalls bulk
# transfers to a slow reader for rto_min (1 s) at a time.
sysctl -qw net.sctp.rto_min=50 net.sctp.rto_initial=200 || echo "lane init: no net.sctp sysctls" >&2

chroot $r /bin/sh /run/lane/job.sh > /mnt/lane/stdout 2> /mnt/lane/stderr
echo $? > /mnt/lane/status
sync
reboot -f
