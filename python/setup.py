"""Build script for the epx Python package.

Static metadata lives in pyproject.toml; this file adds what has to be
computed: the version (from configure.ac), the C extension epx._C, the step
that builds or finds libepx, and an sdist that carries the C source tree.
See README.md for the environment variables.
"""

import glob
import json
import os
import re
import shlex
import shutil
import subprocess

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.sdist import sdist

HERE = os.path.dirname(os.path.abspath(__file__))
# Inside an sdist the C source tree sits in this subdirectory; in a clone it
# is the parent of python/.
SRC_SUBDIR = "epx-src"
# Paths of the source tree that the sdist leaves out (relative, "/"-separated).
SDIST_EXCLUDE = ("python/", "bench/results/")
PKG = "epx"


def fail(msg):
    """Stop the build with a readable message (shown by pip on failure)."""
    raise SystemExit("\nepx: error: " + msg.strip() + "\n")


def note(msg):
    print("epx: " + msg, flush=True)


def is_epx_root(path):
    try:
        with open(os.path.join(path, "configure.ac"), encoding="utf-8") as f:
            return "epx" in f.read()
    except OSError:
        return False


def find_root():
    for cand in (os.path.join(HERE, SRC_SUBDIR), os.path.dirname(HERE)):
        if is_epx_root(cand):
            return os.path.abspath(cand)
    return None


ROOT = find_root()
if ROOT is None:
    fail(
        "the epx C source tree was not found: expected configure.ac in\n"
        "  %s or\n  %s\n"
        "Install from a clone of the repository (pip install ./python, which\n"
        "needs pip >= 21.3 to build in place) or from an sdist."
        % (os.path.join(HERE, SRC_SUBDIR), os.path.dirname(HERE))
    )


def read_version(root):
    with open(os.path.join(root, "configure.ac"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"AC_INIT\(\s*\[?[^],]*\]?\s*,\s*\[?\s*([^],)\s]+)", text)
    if not m:
        fail("cannot read the version from AC_INIT in %s/configure.ac" % root)
    return m.group(1)


def run(cmd, cwd, what, hint=""):
    note("%s: %s (in %s)" % (what, " ".join(shlex.quote(c) for c in cmd), cwd))
    try:
        subprocess.run(cmd, cwd=cwd, check=True)
    except FileNotFoundError as e:
        fail("%s failed: %s\n%s" % (what, e, hint))
    except subprocess.CalledProcessError as e:
        fail("%s failed (exit status %d).\n%s" % (what, e.returncode, hint))


def pkg_config(*args):
    """Output of pkg-config, or None if it fails or is missing."""
    try:
        r = subprocess.run(["pkg-config", *args], capture_output=True, text=True)
    except OSError:
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def deps_hint(root):
    script = os.path.join(root, "scripts", "install-deps.sh")
    return (
        "libepx needs a C compiler, make, pkg-config, hwloc (>= 2.0) and jansson\n"
        "(>= 2.10) development files, and autoconf, automake and libtool when\n"
        "configure has not been generated yet.  On Debian/Ubuntu run\n"
        "  %s\n"
        "(or: apt-get install build-essential pkg-config libhwloc-dev libjansson-dev\n"
        " autoconf automake libtool).  Set EPX_CONFIGURE_FLAGS to pass options to\n"
        "configure, e.g. EPX_CONFIGURE_FLAGS='--without-cuda --without-mpi'." % script
    )


def check_build_deps(root, need_autotools):
    missing = []
    if shutil.which("make") is None:
        missing.append("make")
    if need_autotools:
        missing += [t for t in ("autoreconf", "automake", "libtoolize") if shutil.which(t) is None]
    if shutil.which("pkg-config") is None:
        missing.append("pkg-config")
    else:
        if pkg_config("--exists", "hwloc >= 2.0") is None:
            missing.append("hwloc >= 2.0 (libhwloc-dev)")
        if pkg_config("--exists", "jansson >= 2.10") is None:
            missing.append("jansson >= 2.10 (libjansson-dev)")
    if missing:
        fail("cannot build libepx, missing: %s\n%s" % (", ".join(missing), deps_hint(root)))


def make_cmd(builddir):
    cmd = ["make", "-C", builddir]
    if "-j" not in os.environ.get("MAKEFLAGS", ""):
        cmd.append("-j%d" % (os.cpu_count() or 1))
    return cmd + ["libepx.la", "modules"]


def read_la(path):
    """dlname (the SONAME) and the real file name from a libtool .la file."""
    vals = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            m = re.match(r"(\w+)='(.*)'", line.strip())
            if m:
                vals[m.group(1)] = m.group(2)
    names = vals.get("library_names", "").split()
    if not vals.get("dlname") or not names:
        fail("%s names no shared library (was libepx built with --disable-shared?)" % path)
    return vals["dlname"], names[0]


# The package's libepx is built without CUDA and NCCL unless
# EPX_CONFIGURE_FLAGS says otherwise: libepx itself links neither (they are
# run-time modules, carried in epx/epx/ when built, which CUDA engines,
# epx.MoE(device=...), need), but compiling the kernels takes minutes;
# ranks bootstrap through torch.distributed or the environment, not MPI.
DEFAULT_CONFIGURE_FLAGS = "--without-cuda --without-nccl --without-mpi"


def stage_sources(root, dest):
    """Copy the tracked sources of a tree configured in place (automake
    refuses to configure out of tree from it) to dest; unchanged files are
    left alone, so make rebuilds only what changed."""
    rels = sdist_source_files(root)
    for rel in rels:
        src, dst = os.path.join(root, rel), os.path.join(dest, rel)
        st = os.stat(src)
        try:
            dt = os.stat(dst)
            if dt.st_size == st.st_size and dt.st_mtime >= st.st_mtime:
                continue
        except OSError:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)
    note("staged %d source files in %s" % (len(rels), dest))
    return dest


def build_libepx(root):
    """Build libepx.la from the source tree, out of tree under build/;
    return its build directory."""
    flags = shlex.split(os.environ.get("EPX_CONFIGURE_FLAGS", DEFAULT_CONFIGURE_FLAGS))
    srcdir = root
    if os.path.exists(os.path.join(root, "config.status")):
        srcdir = stage_sources(root, os.path.join(HERE, "build", "epx-src"))
    need_autogen = not os.path.exists(os.path.join(srcdir, "configure"))
    check_build_deps(root, need_autogen)
    if need_autogen:
        run(["sh", "./autogen.sh"], srcdir, "autogen", deps_hint(root))
    builddir = os.path.join(HERE, "build", "libepx")
    stamp_path = os.path.join(builddir, "epx-configure.json")
    stamp = {"srcdir": srcdir, "flags": flags}
    try:
        with open(stamp_path, encoding="utf-8") as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if old != stamp or not os.path.exists(os.path.join(builddir, "config.status")):
        shutil.rmtree(builddir, ignore_errors=True)
        os.makedirs(builddir)
        run(
            [os.path.join(srcdir, "configure"), *flags],
            builddir,
            "configure",
            "See %s/config.log.\n%s" % (builddir, deps_hint(root)),
        )
        with open(stamp_path, "w", encoding="utf-8") as f:
            json.dump(stamp, f)
    run(make_cmd(builddir), root, "make", "See the compiler output above.\n" + deps_hint(root))
    return builddir


class LibEpx:
    """Where the extension finds libepx, and what goes into the package."""

    def __init__(self):
        self.include_dirs = []
        self.library_dirs = []
        self.link_args = []
        self.lib_file = None  # real shared object to copy into the package
        self.soname = None  # the name it gets there
        self.systems_dir = None
        self.modules = []  # epx_<name>.so files to put beside it, in epx/


def system_libepx():
    lib = LibEpx()
    for tok in shlex.split(pkg_config("--cflags", "epx") or ""):
        if tok.startswith("-I"):
            lib.include_dirs.append(tok[2:])
    incdir = pkg_config("--variable=includedir", "epx")
    if incdir and incdir not in lib.include_dirs:
        lib.include_dirs.append(incdir)
    libdir = pkg_config("--variable=libdir", "epx")
    if libdir:
        lib.library_dirs.append(libdir)
        lib.link_args.append("-Wl,-rpath," + libdir)
    lib.link_args += shlex.split(pkg_config("--libs", "epx") or "-lepx")
    prefix = pkg_config("--variable=prefix", "epx")
    for d in (
        ROOT and os.path.join(ROOT, "topology", "systems"),
        prefix and os.path.join(prefix, "share", "epx", "systems"),
    ):
        if d and os.path.isdir(d):
            lib.systems_dir = d
            break
    note("linking to the installed libepx (%s)" % (libdir or "pkg-config"))
    return lib


def source_libepx():
    builddir = build_libepx(ROOT)
    soname, real = read_la(os.path.join(builddir, "libepx.la"))
    libs = os.path.join(builddir, ".libs")
    lib = LibEpx()
    lib.include_dirs.append(os.path.join(ROOT, "include"))
    lib.library_dirs.append(libs)
    lib.link_args += ["-lepx", "-Wl,-rpath,$ORIGIN"]
    lib.lib_file = os.path.join(libs, real)
    lib.soname = soname
    lib.systems_dir = os.path.join(ROOT, "topology", "systems")
    # The optional parts libepx loads at run time (src/module/README.md):
    # it looks for them in epx/ beside itself once moved out of its tree.
    lib.modules = sorted(glob.glob(os.path.join(builddir, "src", "module", ".libs", "epx_*.so")))
    if not os.path.exists(lib.lib_file):
        fail("make finished but %s is missing" % lib.lib_file)
    return lib


def find_libepx():
    if os.environ.get("EPX_USE_SYSTEM_LIB") == "1":
        if pkg_config("--exists", "epx") is not None:
            return system_libepx()
        note("EPX_USE_SYSTEM_LIB=1 but pkg-config finds no epx: building libepx from source")
    return source_libepx()


def copy_file(src, dst):
    if os.path.lexists(dst):
        os.remove(dst)
    shutil.copy2(src, dst)


class BuildExt(build_ext):
    """Build (or find) libepx first, then the extension; put libepx and the
    system descriptions beside the extension."""

    def run(self):
        inplace = self.inplace
        lib = find_libepx()
        for ext in self.extensions:
            ext.include_dirs = lib.include_dirs + ext.include_dirs
            ext.library_dirs = lib.library_dirs + ext.library_dirs
            ext.extra_link_args = ext.extra_link_args + lib.link_args
            if lib.lib_file:
                # Relink when the library changes (e.g. a new SONAME).
                ext.depends = ext.depends + [lib.lib_file]
        # Relink everything when the way to libepx changes (source build vs
        # installed library): build/ keeps objects between builds.
        key = json.dumps([lib.include_dirs, lib.library_dirs, lib.link_args, lib.soname])
        key_path = os.path.join(self.build_temp, "epx-libepx.json")
        try:
            with open(key_path, encoding="utf-8") as f:
                if f.read() != key:
                    self.force = True
        except OSError:
            self.force = True
        super().run()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(key_path, "w", encoding="utf-8") as f:
            f.write(key)
        dests = [os.path.join(self.build_lib, PKG)]
        if inplace:  # editable install / build_ext --inplace
            build_py = self.get_finalized_command("build_py")
            dests.append(os.path.abspath(build_py.get_package_dir(PKG)))
        jsons = sorted(glob.glob(os.path.join(lib.systems_dir or "", "*.json")))
        for d in dests:
            os.makedirs(d, exist_ok=True)
            for old in glob.glob(os.path.join(d, "libepx.so*")):  # from an earlier build
                os.remove(old)
            if lib.lib_file:
                copy_file(lib.lib_file, os.path.join(d, lib.soname))
            moddir = os.path.join(d, "epx")
            for old in glob.glob(os.path.join(moddir, "epx_*.so")):
                os.remove(old)
            if lib.modules:
                os.makedirs(moddir, exist_ok=True)
                for f in lib.modules:
                    copy_file(f, os.path.join(moddir, os.path.basename(f)))
            sysdir = os.path.join(d, "systems")
            for old in glob.glob(os.path.join(sysdir, "*.json")):
                os.remove(old)
            if jsons:
                os.makedirs(sysdir, exist_ok=True)
                for f in jsons:
                    copy_file(f, os.path.join(sysdir, os.path.basename(f)))


def sdist_source_files(root):
    """Relative paths of the C source tree that the sdist carries."""
    if os.path.abspath(root) == os.path.join(HERE, SRC_SUBDIR):
        # An sdist made from an unpacked sdist: take the tree as it is.
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                files.append(os.path.relpath(os.path.join(dirpath, name), root))
        return files
    try:
        out = subprocess.run(
            ["git", "-C", root, "ls-files", "-z"], check=True, capture_output=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        fail("making an sdist needs git and a git checkout of epx (%s): %s" % (root, e))
    files = []
    for rel in out.decode("utf-8", "surrogateescape").split("\0"):
        if not rel or rel.startswith(SDIST_EXCLUDE):
            continue
        path = os.path.join(root, rel)
        if os.path.isfile(path) or os.path.islink(path):  # skip deleted files, submodules
            files.append(rel)
    return files


class SDist(sdist):
    """Also carry the C library's source tree, under epx-src/."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        dest = os.path.join(base_dir, SRC_SUBDIR)
        rels = sdist_source_files(ROOT)
        for rel in rels:
            dst = os.path.join(dest, rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if os.path.lexists(dst):
                os.remove(dst)
            shutil.copy2(os.path.join(ROOT, rel), dst, follow_symlinks=False)
        note("sdist: %d files of the C source tree under %s/" % (len(rels), SRC_SUBDIR))


def extension():
    sources = sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "src", "*.c")))
    if not sources:
        fail("no C sources in %s" % os.path.join(HERE, "src"))
    depends = [os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, "src", "*.h"))]
    depends += glob.glob(os.path.join(ROOT, "include", "*.h"))
    depends += glob.glob(os.path.join(ROOT, "include", "*", "*.h"))
    return Extension(
        PKG + "._C",
        sources=sources,
        depends=sorted(depends),
        extra_compile_args=["-std=gnu11", "-Wall"],
    )


os.chdir(HERE)  # relative source paths below are relative to this directory
setup(
    version=read_version(ROOT),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExt, "sdist": SDist},
)
