# Shared by the lab scripts (sourced, not run): paths, architecture names,
# and fetching Debian packages into the lab's cache.
#
# Layout of the state dir ($SSV_LAB_DIR, default <repo>/state/lab):
#   debs/                      downloaded .deb files (all architectures)
#   ARCH/pkg/                  the kernel and busybox packages, unpacked
#   ARCH/kernel                outer and inner kernel (x86_64: bzImage, aarch64: raw Image)
#   ARCH/lab-initramfs.cpio.gz the lab VM's initramfs (busybox, early modules, init)
#   ARCH/modules.img           ext4 image of lib/modules/KVER, mounted read-only in the lab VM
#   ARCH/guest/                the inner guest: bzImage (x86_64) or Image (aarch64, raw),
#                              initramfs.cpio.gz, modules/ (virtio, for guest-initramfs.sh)
#   aarch64/sysroot/           arm64 QEMU and its libraries (for nested QEMU in the arm64 lab VM)

LAB_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LAB_REPO=$(cd "$LAB_SCRIPTS/../.." && pwd)
LAB_DIR=${SSV_LAB_DIR:-$LAB_REPO/state/lab}

lab_log() { echo "lab: $*" >&2; }
lab_die() {
    echo "lab: error: $*" >&2
    exit 2
}
# Exit status 3: something the lab needs cannot be had on this machine (a
# package missing from apt's sources, no root to install it); tests skip.
lab_unavailable() {
    echo "lab: unavailable: $*" >&2
    exit 3
}

# Serialises builds and downloads in $LAB_DIR across processes (held until
# the calling script exits).
lab_lock() {
    mkdir -p "$LAB_DIR"
    exec 9>"$LAB_DIR/.lock"
    flock 9
}

# Sets DEB_ARCH, KERNEL_FLAVOUR, CONSOLE, QEMU_PKG, QEMU_BIN, TRIPLET for $1.
lab_arch() {
    case "$1" in
    x86_64)
        DEB_ARCH=amd64 KERNEL_FLAVOUR=cloud-amd64 CONSOLE=ttyS0
        QEMU_PKG=qemu-system-x86 QEMU_BIN=qemu-system-x86_64 TRIPLET=x86_64-linux-gnu
        ;;
    aarch64)
        DEB_ARCH=arm64 KERNEL_FLAVOUR=cloud-arm64 CONSOLE=ttyAMA0
        QEMU_PKG=qemu-system-arm QEMU_BIN=qemu-system-aarch64 TRIPLET=aarch64-linux-gnu
        ;;
    *) lab_die "unknown architecture '$1' (x86_64 or aarch64)" ;;
    esac
}

lab_need_root() {
    [ "$(id -u)" = 0 ] || lab_unavailable "$1 needs root"
}

# Installs Debian packages that are missing on the host.
lab_apt_install() {
    local missing=() p
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    lab_need_root "installing ${missing[*]}"
    lab_log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
        lab_unavailable "apt-get install ${missing[*]} failed"
}

# Makes arm64 packages visible to apt (dpkg --add-architecture arm64).
lab_enable_arm64() {
    dpkg --print-foreign-architectures | grep -qx arm64 && return 0
    lab_need_root "dpkg --add-architecture arm64"
    lab_log "adding dpkg architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -qq || lab_unavailable "apt-get update failed after adding arm64"
}

# Downloads packages (name or name:arch) into $LAB_DIR/debs unless a file for
# the candidate version is already there; prints the .deb paths.
lab_fetch() {
    mkdir -p "$LAB_DIR/debs"
    local spec name arch ver file missing=() found=()
    declare -A cand=()
    # One apt-cache call for all: it loads the package lists each time.
    while read -r name ver; do cand[$name]=$ver; done < <(apt-cache policy "$@" 2>/dev/null |
        awk '/^[^ ].*:$/ {sub(/:$/, ""); p = $0} /^  Candidate:/ {print p, $2}')
    deb_of() { ls "$LAB_DIR/debs/${name}_${ver/:/%3a}_"{"$arch",all}.deb 2>/dev/null | head -n1 || true; }
    for pass in 1 2; do
        missing=() found=()
        for spec in "$@"; do
            name=${spec%%:*}
            arch=$DEB_ARCH
            [ "$spec" != "$name" ] && arch=${spec#*:}
            ver=${cand[$spec]:-${cand[$name]:-}}
            [ -n "$ver" ] && [ "$ver" != "(none)" ] || lab_unavailable "no candidate for $spec in apt sources"
            # apt names files with the epoch's colon escaped; the arch may be 'all'.
            file=$(deb_of)
            if [ -n "$file" ]; then found+=("$file"); else missing+=("$spec"); fi
        done
        [ ${#missing[@]} -eq 0 ] && break
        [ "$pass" = 2 ] && lab_die "downloaded ${missing[*]} but cannot find their .deb files"
        (cd "$LAB_DIR/debs" && apt-get download -q "${missing[@]}" >/dev/null 2>&1) ||
            lab_unavailable "apt-get download ${missing[*]} failed"
    done
    printf '%s\n' "${found[@]}"
}

# The versioned kernel image package behind Debian's flavour metapackage.
lab_kernel_pkg() {
    apt-cache depends "linux-image-$KERNEL_FLAVOUR:$DEB_ARCH" 2>/dev/null |
        awk '/Depends: linux-image-/ {sub(/:.*/, "", $2); print $2; exit}'
}

# x86_64's QEMU from Debian's backports of this release (bookworm: 10.0),
# unpacked under $LAB_DIR/host-qemu/backports with the libraries this host
# lacks, when apt can fetch them: under the installed 7.2, TCG's nested SVM
# crashed the lab kernel or its nested guest in about one lab_vmm run in
# three (BENCHMARKS.md, issue 7). Fails, having said why, where it cannot.
lab_backports_qemu() {
    local root=$1 apt=$LAB_DIR/apt-backports codename opts ver deb pkgs=()
    if [ -f "$root/.stamp" ] && lab_libs_found "$root" "$root/usr/bin/$QEMU_BIN"; then
        return 0
    fi
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    [ -n "$codename" ] || return 1
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/debs"
    printf 'deb http://deb.debian.org/debian %s main\n' "$codename" "$codename-backports" >"$apt/sources.list"
    printf 'Package: *\nPin: release n=%s-backports\nPin-Priority: 600\n' "$codename" >"$apt/preferences"
    opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Etc::Preferences=$apt/preferences"
        -o Dir::Etc::PreferencesParts=/dev/null -o "Dir::Cache=$apt/cache")
    if ! apt-get "${opts[@]}" update -qq >/dev/null 2>&1; then
        lab_log "cannot read $codename-backports; the lab uses this host's QEMU"
        return 1
    fi
    ver=$(apt-cache "${opts[@]}" policy "$QEMU_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
    case $ver in
    *bpo*) ;;
    *)
        lab_log "$codename-backports has no $QEMU_PKG; the lab uses this host's QEMU"
        return 1
        ;;
    esac
    mapfile -t pkgs < <(lab_qemu_unpack_set "${opts[@]}")
    lab_log "unpacking $QEMU_PKG $ver from $codename-backports and ${#pkgs[@]} packages this host lacks into $root"
    rm -rf "$root" "$root.new" "$apt/debs"/*.deb
    (cd "$apt/debs" && apt-get "${opts[@]}" download -q "${pkgs[@]}" >/dev/null 2>&1) || {
        lab_log "cannot download $QEMU_PKG $ver and its libraries; the lab uses this host's QEMU"
        return 1
    }
    mkdir -p "$root.new"
    for deb in "$apt/debs"/*.deb; do dpkg-deb -x "$deb" "$root.new"; done
    if ! lab_libs_found "$root.new" "$root.new/usr/bin/$QEMU_BIN"; then
        lab_log "$QEMU_PKG $ver still lacks libraries here; the lab uses this host's QEMU"
        rm -rf "$root.new"
        return 1
    fi
    echo "$ver" >"$root.new/.stamp"
    mv "$root.new" "$root"
}

# The packages to unpack for $QEMU_PKG (apt-cache options as arguments):
# QEMU itself and its firmware even where installed (they are looked for
# under the unpacked root), and the libraries this host lacks; never
# qemu-utils (the machine's may be newer, and other tests use it).
lab_qemu_unpack_set() {
    local p
    for p in $(apt-cache "$@" depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances "$QEMU_PKG" 2>/dev/null |
        grep -E '^[a-z0-9][^ <:]*$' | sort -u); do
        case $p in
        qemu-utils) continue ;;
        qemu-* | seabios | ipxe-qemu) ;;
        *) ! dpkg -s "$p" >/dev/null 2>&1 || continue ;;
        esac
        echo "$p"
    done
}

# The library path of QEMU unpacked under ROOT.
lab_lib_path() {
    echo "$1/usr/lib/x86_64-linux-gnu:$1/lib/x86_64-linux-gnu"
}

# Whether BIN finds every library it needs, with ROOT's unpacked ones.
lab_libs_found() {
    local out
    out=$(LD_LIBRARY_PATH=$(lab_lib_path "$1") ldd "$2" 2>&1) || return 1
    ! grep -q 'not found' <<<"$out"
}

# The host's QEMU for ARCH's lab VM, as an argv prefix in QEMU_CMD: for
# x86_64 the backports one (above) where it can be had; else Debian's
# installed qemu-system package if there is one, else that package unpacked
# under $LAB_DIR/host-qemu with the libraries the host lacks. Installing it
# would remove a newer qemu-utils the machine may have (the two conflict),
# which other tests use. SSV_LAB_HOST_QEMU=unpacked forces the unpacked one,
# =installed the installed one.
lab_host_qemu() {
    local bpo=$LAB_DIR/host-qemu/backports
    if [ "$QEMU_PKG" = qemu-system-x86 ] && [ -z "${SSV_LAB_HOST_QEMU:-}" ] &&
        (lab_lock && lab_backports_qemu "$bpo"); then
        QEMU_CMD=(env "LD_LIBRARY_PATH=$(lab_lib_path "$bpo")"
            "$bpo/usr/bin/$QEMU_BIN" -L "$bpo/usr/share/qemu" -L "$bpo/usr/share/seabios")
        QEMU_ROOT=$bpo
        return 0
    fi
    if [ "${SSV_LAB_HOST_QEMU:-}" != unpacked ] && command -v "$QEMU_BIN" >/dev/null; then
        QEMU_CMD=("$QEMU_BIN")
        return 0
    fi
    local root=$LAB_DIR/host-qemu/$QEMU_PKG ver deb
    ver=$(apt-cache policy "$QEMU_PKG" 2>/dev/null | awk '/Candidate:/ {print $2}')
    if ! [ -f "$root/.stamp" ] || [ "$(cat "$root/.stamp")" != "$ver" ]; then
        lab_log "unpacking $QEMU_PKG $ver and the libraries this host lacks into $root"
        rm -rf "$root"
        mkdir -p "$root"
        for deb in $(DEB_ARCH=amd64 lab_fetch $(lab_qemu_unpack_set)); do
            dpkg-deb -x "$deb" "$root"
        done
        echo "$ver" >"$root/.stamp"
    fi
    QEMU_CMD=(env "LD_LIBRARY_PATH=$(lab_lib_path "$root")"
        "$root/usr/bin/$QEMU_BIN" -L "$root/usr/share/qemu" -L "$root/usr/share/seabios")
    QEMU_ROOT=$root
}

# Unpacks Debian's arm64 QEMU (qemu-system-arm:arm64) and the arm64 libraries
# it depends on into $LAB_DIR/aarch64/sysroot; prints that path.
lab_arm64_qemu_sysroot() {
    local root=$LAB_DIR/aarch64/sysroot deb
    local ver
    ver=$(apt-cache policy qemu-system-arm:arm64 2>/dev/null | awk '/Candidate:/ {print $2}')
    lab_lock
    if [ -f "$root/.stamp" ] && [ "$(cat "$root/.stamp")" = "$ver" ]; then
        echo "$root"
        return 0
    fi
    lab_enable_arm64
    lab_log "unpacking arm64 QEMU $ver and its libraries into $root"
    rm -rf "$root"
    mkdir -p "$root"
    # The arm64 packages of the dependency tree (architecture-independent
    # ones carry data, not code the binary loads).
    local pkgs
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances qemu-system-arm:arm64 2>/dev/null |
        grep -E '^[^ <]+:arm64$' | sort -u)
    for deb in $(DEB_ARCH=arm64 lab_fetch $pkgs); do
        dpkg-deb -x "$deb" "$root"
    done
    echo "$ver" >"$root/.stamp"
    echo "$root"
}
