"""Build of the optional C extension flatminima._fastrand (the rest of the metadata is in pyproject.toml).

The extension adds counter-based Gaussian noise in place (Entropy-SGD's Langevin noise); if it cannot be
built (no C compiler, an unsupported compiler), installation still succeeds and flatminima draws the noise
with torch's generator instead. ``pip install -e .`` builds it in place, next to the sources.
No -march=native: the kernel picks AVX-512 / AVX2 code paths at run time (see _fastrand.c).
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

# -O3 for the float64 loop's auto-vectoriser; no errno from sqrt (so it is one instruction); no implicit
# contraction into FMAs, so every code path rounds the same way (the float32 kernel's FMAs are explicit).
UNIX_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]


class OptionalBuildExt(build_ext):
    """build_ext that never fails the installation: a failed build leaves flatminima on its torch fallback."""

    def build_extension(self, ext: Extension) -> None:
        if self.compiler.compiler_type == "unix":
            ext.extra_compile_args = list(UNIX_FLAGS)
            ext.libraries = ["m"]  # fmaf, sqrt of the portable path
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any failure: the extension is optional
            self.warn(f"building {ext.name} failed ({exc}); flatminima will use torch's generator instead")

    def copy_file(self, infile, outfile, *args, **kwargs):
        # an editable install copies the built library next to the sources: unlink the old one first, so a
        # process that has it loaded keeps its (now nameless) copy instead of reading a half-overwritten file
        if os.path.isfile(outfile) and outfile.endswith((".so", ".pyd")):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - e.g. no compiler at all
            self.warn(f"building C extensions failed ({exc}); flatminima will use torch's generator instead")


setup(
    ext_modules=[Extension("flatminima._fastrand", ["src/flatminima/_fastrand.c"], optional=True)],
    cmdclass={"build_ext": OptionalBuildExt},
)
