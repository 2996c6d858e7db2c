#!/usr/bin/env python3
"""The kernel lane: run a command inside a Debian kernel that has SCTP and vsock loopback.

The kernel of our development and CI machines has neither (see
``docs/sctp-vsock.rst``). This runner boots Debian's own kernel under QEMU
(software CPU: TCG) with the modules loaded, the host's ``/`` visible
read-only (an overlay on tmpfs makes it writable, throw-away), and runs one
command there — normally pytest on ``tests/kernel``. It prints the command's
output and exits with its status.

    python3 tools/kernel/run.py [--cwd DIR] [--env K=V] [--timeout S] -- CMD ARGS...

Steps (each cached where it can be):

1. ``qemu-system-x86`` and ``busybox-static`` from apt when missing (root only).
2. The kernel package ``linux-image-amd64`` depends on, fetched with
   ``apt-get download`` into the cache (``$CONDUIT_KERNEL_CACHE``, else
   ``~/.cache/trio-conduit-kernel``); from it, streamed through ``dpkg-deb``:
   the uncompressed ELF inside ``vmlinuz`` (QEMU boots it directly through
   its PVH entry, skipping ~3 s of decompression under TCG) and the modules
   we need plus their dependencies (each module's ``.modinfo`` ``depends=``
   and ``softdep=pre:``), in load order. The ``.deb`` is not kept.
3. A tiny initramfs (uncompressed newc cpio): static busybox, ``init.sh``
   next to this file, the modules, their load order.
4. QEMU: 1 vCPU, 1 GiB, ``-no-reboot``, no network device at all; the host's
   ``/`` and a per-run "lane" directory as two virtio-9p shares. The guest
   writes stdout, stderr and the exit status into the lane directory; they are
   relayed here while it runs.

Exit status: the command's; 124 when ``--timeout`` expired; 125 when the
guest could not run the command (the console log is printed).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import shlex
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

HERE: Final = Path(__file__).resolve().parent
INIT_SCRIPT: Final = HERE / "init.sh"
KERNEL_META_PACKAGE: Final = "linux-image-amd64"
APT_PACKAGES: Final = ("qemu-system-x86", "busybox-static")
QEMU: Final = "qemu-system-x86_64"
BUSYBOX: Final = "/bin/busybox"
QBOOT: Final = "/usr/share/qemu/qboot.rom"
#: What the guest needs; their dependencies are found from the modules themselves.
ROOT_MODULES: Final = ("sctp", "vsock_loopback", "virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Preferred providers of a soft dependency named by alias (libcrc32c: "pre: crc32c").
PREFERRED_PROVIDERS: Final = {"crc32c": "crc32c_generic"}
KERNEL_CMDLINE: Final = (
    "console=ttyS0 quiet panic=-1 random.trust_cpu=on mitigations=off "
    "cryptomgr.notests tsc=reliable no_timer_check"
)
#: Host environment variables handed to the command in the guest.
PASSED_ENV: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TERM", "PYTHONHASHSEED")
CACHE_FORMAT: Final = 1


class LaneError(Exception):
    """The lane cannot run here; the message says what is missing."""


def log(msg: str) -> None:
    print(f"kernel lane: {msg}", file=sys.stderr, flush=True)


def run(
    cmd: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), text=True, capture_output=True, check=False, env=env, cwd=cwd)


# ---------------------------------------------------------------------------
# host packages
# ---------------------------------------------------------------------------


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != b"\x7fELF" or head[4] != 2:
                return False
            (phoff,) = struct.unpack_from("<Q", head, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != pt_interp for i in range(phnum))


def _apt_get(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", *args], env=env, cwd=cwd)


def ensure_host_tools() -> None:
    """qemu-system-x86 and a static busybox; apt-get install them when missing (as root)."""
    missing = []
    if shutil.which(QEMU) is None:
        missing.append("qemu-system-x86")
    if not _is_static_elf(BUSYBOX):
        missing.append("busybox-static")
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LaneError(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)})")
    log(f"installing {' '.join(missing)} with apt-get")
    args = ("install", "-y", "--no-install-recommends", *missing)
    result = _apt_get(*args)
    if result.returncode != 0:
        _apt_get("update")
        result = _apt_get(*args)
    if result.returncode != 0:
        raise LaneError(f"apt-get install {' '.join(missing)} failed:\n{result.stderr.strip()}")


# ---------------------------------------------------------------------------
# the kernel: package, ELF image, modules
# ---------------------------------------------------------------------------


def kernel_package() -> str:
    """The versioned package ``linux-image-amd64`` depends on (e.g. ``linux-image-6.1.0-56-amd64``)."""
    for attempt in range(2):
        result = run(["apt-cache", "depends", KERNEL_META_PACKAGE])
        for line in result.stdout.splitlines():
            key, _, value = line.strip().partition(":")
            if key == "Depends" and value.strip().startswith("linux-image-"):
                return value.strip()
        if attempt == 0 and os.geteuid() == 0:
            _apt_get("update")
    raise LaneError(f"apt-cache knows no {KERNEL_META_PACKAGE} (is this Debian, with apt lists?)")


def _elf_sections(data: bytes) -> dict[str, tuple[int, int]]:
    """Section name → (offset, size) of an ELF64 little-endian object."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 object")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    str_off = headers[shstrndx][4]
    out = {}
    for name_off, _type, _flags, _addr, offset, size in headers:
        end = data.index(b"\0", str_off + name_off)
        out[data[str_off + name_off : end].decode()] = (offset, size)
    return out


@dataclass
class ModInfo:
    name: str
    depends: list[str]
    softdeps: list[str]
    aliases: list[str]


def modinfo(data: bytes) -> ModInfo:
    """``name``, ``depends``, ``softdep`` (pre) and ``alias`` from a module's ``.modinfo``."""
    offset, size = _elf_sections(data)[".modinfo"]
    fields: dict[str, list[str]] = {}
    for entry in data[offset : offset + size].split(b"\0"):
        key, sep, value = entry.decode(errors="replace").partition("=")
        if sep:
            fields.setdefault(key, []).append(value)
    soft: list[str] = []
    for text in fields.get("softdep", []):
        words = text.split()
        if "pre:" in words:
            for word in words[words.index("pre:") + 1 :]:
                if word.endswith(":"):
                    break
                soft.append(word)
    return ModInfo(
        name=fields.get("name", [""])[0],
        depends=[d for d in ",".join(fields.get("depends", [])).split(",") if d],
        softdeps=soft,
        aliases=fields.get("alias", []),
    )


def load_order(roots: Iterable[str], index: dict[str, ModInfo]) -> list[str]:
    """Modules to ``insmod``, dependencies (hard and soft-pre) before their users."""
    aliases: dict[str, list[str]] = {}
    for info in index.values():
        for alias in info.aliases:
            aliases.setdefault(alias, []).append(info.name)

    def provider(name: str) -> str | None:
        if name in index:
            return name
        choices = aliases.get(name, [])
        preferred = PREFERRED_PROVIDERS.get(name)
        if preferred in choices:
            return preferred
        return choices[0] if choices else None

    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str, required: bool) -> None:
        mod = provider(name)
        if mod is None:
            if required:
                raise LaneError(f"the kernel package has no module {name!r}")
            return  # a soft dependency that is built in
        if mod in order or mod in visiting:
            return
        visiting.add(mod)
        for dep in index[mod].softdeps:
            visit(dep, False)
        for dep in index[mod].depends:
            visit(dep, True)
        visiting.discard(mod)
        order.append(mod)

    for root in roots:
        visit(root, True)
    return order


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The uncompressed ELF ``vmlinux`` inside a bzImage (boot protocol >= 2.08, xz payload)."""
    if bzimage[0x202:0x206] != b"HdrS":
        raise LaneError("vmlinuz is not a bzImage")
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if payload[:6] == b"\xfd7zXZ\x00":
        image = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)
    elif payload[:2] == b"\x1f\x8b":
        image = zlib.decompressobj(wbits=31).decompress(payload)
    else:
        raise LaneError(f"unsupported kernel compression (payload magic {payload[:6].hex()})")
    if image[:4] != b"\x7fELF":
        raise LaneError("the decompressed kernel is not an ELF image")
    return image


@dataclass
class Kernel:
    version: str
    vmlinux: Path
    modules: list[Path]  # in load order


def _module_bytes(name: str, data: bytes) -> bytes:
    """A module file's contents, decompressed (``.ko``, ``.ko.xz``, ``.ko.zst``)."""
    if name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if name.endswith(".ko.zst"):
        if shutil.which("zstd") is None:
            raise LaneError("the kernel's modules are zstd-compressed: install zstd")
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=True).stdout
    return data


def _scan_package(
    deb: Path, wanted: set[str], index: dict[str, ModInfo], modules: dict[str, bytes]
) -> bytes | None:
    """One streamed pass over the package: the bzImage, every module's modinfo, wanted modules' bytes."""
    vmlinuz = None
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc, tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            name = member.name
            is_module = name.endswith((".ko", ".ko.xz", ".ko.zst"))
            if not member.isfile() or not (is_module or name.startswith("./boot/vmlinuz-")):
                continue
            f = tar.extractfile(member)
            assert f is not None
            if not is_module:
                vmlinuz = f.read()
                continue
            data = _module_bytes(name, f.read())
            info = modinfo(data)
            index[info.name] = info
            if info.name in wanted:
                modules[info.name] = data
                wanted.update(info.depends, info.softdeps, PREFERRED_PROVIDERS.values())
    if proc.returncode != 0:
        raise LaneError(f"dpkg-deb --fsys-tarfile {deb} failed")
    return vmlinuz


def _cached(kdir: Path) -> Kernel | None:
    try:
        meta = json.loads((kdir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != CACHE_FORMAT or meta.get("roots") != list(ROOT_MODULES):
        return None
    return Kernel(kdir.name, kdir / "vmlinux", [kdir / "modules" / f"{m}.ko" for m in meta["order"]])


def _fetch(package: str, kdir: Path) -> None:
    """Download ``package`` and unpack what the lane needs into ``kdir`` (made whole, or not at all)."""
    kdir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=kdir.parent, prefix=f".{kdir.name}-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        result = _apt_get("download", package, cwd=tmp)
        if result.returncode != 0 and os.geteuid() == 0:
            _apt_get("update")  # the lists named a version the mirror no longer has
            result = _apt_get("download", package, cwd=tmp)
        debs = list(work.glob("*.deb"))
        if result.returncode != 0 or not debs:
            raise LaneError(f"apt-get download {package} failed:\n{result.stderr.strip()}")
        index: dict[str, ModInfo] = {}
        found: dict[str, bytes] = {}
        vmlinuz = _scan_package(debs[0], set(ROOT_MODULES), index, found)
        if vmlinuz is None:
            raise LaneError(f"{package} has no /boot/vmlinuz")
        order = load_order(ROOT_MODULES, index)
        if any(m not in found for m in order):  # a dependency came before its user in the tar
            _scan_package(debs[0], set(order), index, found)
        debs[0].unlink()
        out = work / "kernel"
        (out / "modules").mkdir(parents=True)
        for name in order:
            (out / "modules" / f"{name}.ko").write_bytes(found[name])
        (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz))
        manifest = {"format": CACHE_FORMAT, "roots": list(ROOT_MODULES), "order": order}
        (out / "manifest.json").write_text(json.dumps(manifest))
        if kdir.exists():  # an older cache format, or a run that raced us: replace it
            shutil.rmtree(kdir, ignore_errors=True)
        try:
            out.rename(kdir)
        except OSError:
            if _cached(kdir) is None:
                raise


def prepare_kernel(cache: Path) -> Kernel:
    """The kernel ``linux-image-amd64`` depends on: fetched once, then from the cache."""
    try:
        package = kernel_package()
    except LaneError:
        newest_first = sorted(cache.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        for found in filter(None, map(_cached, newest_first)):
            log(f"apt does not say which kernel is current; using the cached {found.version}")
            return found
        raise
    kdir = cache / package.removeprefix("linux-image-")
    kernel = _cached(kdir)
    if kernel is not None:
        return kernel
    log(f"fetching {package} into {kdir}")
    started = time.monotonic()
    _fetch(package, kdir)
    kernel = _cached(kdir)
    if kernel is None:
        raise LaneError(f"the kernel cache {kdir} is unreadable")
    modules = " ".join(m.stem for m in kernel.modules)
    log(f"kernel {kernel.version} ready in {time.monotonic() - started:.1f} s; modules: {modules}")
    return kernel


# ---------------------------------------------------------------------------
# the initramfs
# ---------------------------------------------------------------------------


def _cpio_entry(out: IO[bytes], ino: int, name: str, mode: int, data: bytes = b"", rdev: int = 0) -> None:
    encoded = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev), len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % f for f in fields)
    out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
    out.write(data + b"\0" * (-len(data) % 4))


def build_initramfs(path: Path, kernel: Kernel) -> None:
    """An uncompressed newc cpio: busybox, init, the modules and their load order."""
    S_IFDIR, S_IFREG, S_IFCHR = 0o040000, 0o100000, 0o020000
    entries: list[tuple[str, int, bytes, int]] = [
        ("bin", S_IFDIR | 0o755, b"", 0),
        ("dev", S_IFDIR | 0o755, b"", 0),
        ("dev/console", S_IFCHR | 0o600, b"", os.makedev(5, 1)),
        ("lib", S_IFDIR | 0o755, b"", 0),
        ("lib/modules", S_IFDIR | 0o755, b"", 0),
        ("bin/busybox", S_IFREG | 0o755, Path(BUSYBOX).read_bytes(), 0),
        ("init", S_IFREG | 0o755, INIT_SCRIPT.read_bytes(), 0),
        ("modules.load", S_IFREG | 0o644, "".join(f"{m.stem}\n" for m in kernel.modules).encode(), 0),
    ]
    entries += [(f"lib/modules/{m.name}", S_IFREG | 0o644, m.read_bytes(), 0) for m in kernel.modules]
    with open(path, "wb") as out:
        for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
            _cpio_entry(out, ino, name, mode, data, rdev)
        _cpio_entry(out, 0, "TRAILER!!!", 0)


# ---------------------------------------------------------------------------
# running the guest
# ---------------------------------------------------------------------------


def job_script(command: Sequence[str], cwd: str, env: dict[str, str]) -> str:
    lines = ["# written by tools/kernel/run.py; run by the guest's init, chrooted"]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in sorted(env.items())]
    lines.append('read -r up _ < /proc/uptime && echo "$up" > /run/lane/started')
    lines.append(f"cd {shlex.quote(cwd)} || exit 125")
    lines.append("exec " + " ".join(shlex.quote(arg) for arg in command))
    return "\n".join(lines) + "\n"


class _Relay:
    """Copies what the guest appends to a file in the lane share to one of our streams."""

    def __init__(self, path: Path, sink: IO[bytes]) -> None:
        self.path = path
        self.sink = sink
        self.offset = 0

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.sink.write(data)
            self.sink.flush()


def qemu_command(kernel: Kernel, initramfs: Path, lane: Path, console: Path) -> list[str]:
    cmd = [QEMU, "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none", "-monitor", "none"]
    cmd += ["-machine", "pc", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "1", "-m", "1024"]
    cmd += ["-nic", "none"]  # no network device: nothing leaves the guest
    if os.path.exists(QBOOT):
        cmd += ["-bios", QBOOT]
    cmd += ["-kernel", str(kernel.vmlinux), "-initrd", str(initramfs), "-append", KERNEL_CMDLINE]
    cmd += ["-serial", f"file:{console}"]
    cmd += ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
    cmd += ["-virtfs", f"local,path={lane},mount_tag=lane,security_model=none"]
    return cmd


def run_in_guest(
    kernel: Kernel, command: Sequence[str], cwd: str, env: dict[str, str], timeout: float
) -> int:
    with tempfile.TemporaryDirectory(prefix="conduit-kernel-lane-") as tmp:
        work = Path(tmp)
        lane = work / "lane"
        lane.mkdir()
        initramfs = work / "initramfs.cpio"
        console = work / "console.log"
        build_initramfs(initramfs, kernel)
        (lane / "job.sh").write_text(job_script(command, cwd, env))
        relays = [_Relay(lane / "stdout", sys.stdout.buffer), _Relay(lane / "stderr", sys.stderr.buffer)]
        started = time.monotonic()
        proc = subprocess.Popen(
            qemu_command(kernel, initramfs, lane, console),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        timed_out = False
        try:
            while proc.poll() is None:
                if time.monotonic() - started > timeout:
                    timed_out = True
                    proc.kill()
                    break
                for relay in relays:
                    relay.pump()
                time.sleep(0.2)
            qemu_output = proc.communicate()[0].decode(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for relay in relays:
            relay.pump()
        elapsed = time.monotonic() - started
        status_file = lane / "status"
        if timed_out:
            log(f"timed out after {timeout:g} s; the guest's console:\n{_tail(console)}")
            return 124
        if not status_file.exists():
            log(
                f"the guest did not report an exit status (QEMU exit {proc.returncode}).\n"
                f"QEMU said: {qemu_output.strip() or '(nothing)'}\nconsole:\n{_tail(console)}"
                + _tail(lane / "init.log")
            )
            return 125
        status = int(status_file.read_text().strip() or 125)
        try:
            booted = f"; the guest was up to the command after {float((lane / 'started').read_text()):.1f} s"
        except (OSError, ValueError):
            booted = ""
        log(f"VM ran {elapsed:.1f} s{booted}; exit status {status}")
        return status


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(none)"


def cache_dir() -> Path:
    explicit = os.environ.get("CONDUIT_KERNEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "trio-conduit-kernel"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run a command in a Debian kernel with SCTP and vsock loopback (QEMU, TCG).",
        usage="%(prog)s [options] -- COMMAND [ARGS...]",
    )
    parser.add_argument("--cwd", default=os.getcwd(), help="directory to run in (default: this one)")
    parser.add_argument("--env", action="append", default=[], metavar="K=V", help="extra environment")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before the VM is killed")
    parser.add_argument("--cache", type=Path, default=None, help="cache directory for the kernel")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (put it after --)")
    env = {key: os.environ[key] for key in PASSED_ENV if key in os.environ}
    env["CONDUIT_KERNEL_LANE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--env wants K=V, not {item!r}")
        env[key] = value
    started = time.monotonic()
    try:
        ensure_host_tools()
        kernel = prepare_kernel(args.cache or cache_dir())
    except LaneError as exc:
        log(str(exc))
        return 125
    log(f"setup {time.monotonic() - started:.1f} s; booting {kernel.version}")
    status = run_in_guest(kernel, command, os.path.abspath(args.cwd), env, args.timeout)
    log(f"wall time {time.monotonic() - started:.1f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
