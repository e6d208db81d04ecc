"""The real memory-nexus 0.1.2, set up in a cache folder from ../shared/peer with Bun from npm, and run
against a HOME of the caller's choosing.

    python scripts/peer.py            # set it up (about 15 s from nothing), or find it set up; print where

Tests import it: `setup()` returns a `Peer` whose `run`, `import_`, `export` and `search` give
(exit code, stdout, stderr). memory-nexus always uses $HOME/.memory-nexus/memory.db, so each call names
its HOME. Nothing is written outside the cache folder (npm's and Bun's caches live in it too) but what the
peer itself writes under that HOME.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
TARBALL = ROOT.parent / "shared" / "peer" / "memory-nexus-0.1.2.tar.gz"
SOURCE = "memory-nexus-0.1.2"          # the folder the tarball holds
VERSION = "0.1.2"                      # what `memory-nexus --version` prints
BUN_VERSION = "1.3.6"
STEP_TIMEOUT = 300                     # seconds for one install step; the whole set-up takes about 15 s
MARKER = "ready"                       # written last: its absence means a set-up cut short
RUN_TIMEOUT = 120                      # seconds for one run of the peer; it starts in about 0.15 s


class PeerUnavailable(Exception):
    """The peer cannot be set up or run here; the message says which step failed and why."""


def cache_dir() -> Path:
    """$MEMORY_PEER_DIR, else ${XDG_CACHE_HOME:-~/.cache}/memory-peer."""
    if os.environ.get("MEMORY_PEER_DIR"):
        return Path(os.environ["MEMORY_PEER_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "memory-peer"


@dataclass(frozen=True)
class Peer:
    """memory-nexus 0.1.2, set up in `directory`."""
    directory: Path

    @property
    def bun(self) -> Path:
        return self.directory / "bun" / "node_modules" / ".bin" / "bun"

    @property
    def source(self) -> Path:
        return self.directory / SOURCE

    def run(self, home: Path, *args: str) -> tuple[int, str, str]:
        """`memory-nexus ARGS` with HOME=home and no terminal on stdin: (exit code, stdout, stderr)."""
        env = {**_cache_env(self.directory), "HOME": str(home), "NO_COLOR": "1"}
        try:
            done = subprocess.run([str(self.bun), "run", "--cwd", str(self.source),
                                   "src/presentation/cli/index.ts", *map(str, args)],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env,
                                  timeout=RUN_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PeerUnavailable(f"running memory-nexus {' '.join(map(str, args))}: {exc}") from exc
        return done.returncode, done.stdout, done.stderr

    def check(self) -> None:
        """That it starts and is the version expected: `--version` prints it."""
        code, out, err = self.run(self.directory, "--version")
        if (code, out) != (0, f"{VERSION}\n"):
            raise PeerUnavailable(f"memory-nexus --version: exit {code}, printed {out.strip()!r} {err.strip()!r}")

    def import_(self, home: Path, file: Path, clear: bool = False) -> tuple[int, str, str]:
        return self.run(home, "import", file, *(["--clear"] if clear else []))

    def export(self, home: Path, file: Path) -> tuple[int, str, str]:
        return self.run(home, "export", file)

    def search(self, home: Path, query: str, limit: int = 20) -> tuple[int, str, str]:
        return self.run(home, "search", query, "--json", "--limit", str(limit))


def database(home: Path) -> Path:
    """Where memory-nexus keeps its database for a given HOME."""
    return home / ".memory-nexus" / "memory.db"


def setup(directory: Path | None = None) -> Peer:
    """The peer set up in `directory` (default: cache_dir()), set up now unless it already is, and seen to run.

    A marker written last names what was set up (the tarball's digest and Bun's version), so a set-up cut
    short, or one from another tarball, is done again from the start, as is one that no longer runs; npm's and
    Bun's download caches are kept.
    """
    directory = (directory or cache_dir()).resolve()
    if not TARBALL.exists():
        raise PeerUnavailable(f"{TARBALL}: not found (../shared/peer is not beside the project)")
    peer = Peer(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory / "lock"):             # two set-ups at once (CI and a developer) take turns
            if is_set_up(directory):
                try:
                    peer.check()
                    return peer
                except PeerUnavailable:
                    pass                                  # a set-up that no longer runs is done again
            _install(peer)
            peer.check()
            (directory / MARKER).write_text(_marker_text())
    except (OSError, tarfile.TarError) as exc:
        raise PeerUnavailable(f"{directory}: {exc}") from exc
    return peer


def _install(peer: Peer) -> None:
    directory = peer.directory
    (directory / MARKER).unlink(missing_ok=True)
    for part in (peer.source, directory / "bun"):
        shutil.rmtree(part, ignore_errors=True)
    with tarfile.open(TARBALL) as archive:
        archive.extractall(directory, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (directory / "bun").mkdir()
    (directory / "bun" / "package.json").write_text('{"name": "memory-peer-bun", "private": true}\n')
    _step("npm install bun", ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                              f"bun@{BUN_VERSION}"], directory / "bun", directory)
    _step("bun install", [str(peer.bun), "install", "--production", "--frozen-lockfile"], peer.source, directory)


def is_set_up(directory: Path) -> bool:
    """Whether a whole set-up of this tarball and this Bun is in `directory`."""
    marker = directory / MARKER
    return TARBALL.exists() and marker.exists() and marker.read_text() == _marker_text()


def _marker_text() -> str:
    return f"{hashlib.sha256(TARBALL.read_bytes()).hexdigest()} bun {BUN_VERSION}\n"


def _cache_env(directory: Path) -> dict[str, str]:
    return {**os.environ, "npm_config_cache": str(directory / "npm-cache"),
            "BUN_INSTALL_CACHE_DIR": str(directory / "bun-cache"), "npm_config_update_notifier": "false"}


def _step(what: str, command: list[str], cwd: Path, directory: Path) -> None:
    try:
        done = subprocess.run(command, cwd=cwd, env=_cache_env(directory), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=STEP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerUnavailable(f"{what}: {exc}") from exc
    if done.returncode != 0:
        log = directory / "failed.log"
        log.write_text(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}")
        head = (done.stderr.strip() or done.stdout.strip()).splitlines()[:4]
        raise PeerUnavailable(f"{what}: exit {done.returncode}: {' | '.join(head)} (all of it in {log})")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main() -> int:
    directory = cache_dir().resolve()
    before = (directory / MARKER).stat().st_mtime_ns if is_set_up(directory) else None
    try:
        peer = setup(directory)
    except PeerUnavailable as exc:
        print(f"Error: memory-nexus {VERSION} cannot be set up in {directory}: {exc}", file=sys.stderr)
        return 1
    was = "already set up" if before == (directory / MARKER).stat().st_mtime_ns else "set up now"
    print(f"memory-nexus {VERSION} with Bun {BUN_VERSION}: {was} in {peer.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
