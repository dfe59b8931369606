#!/usr/bin/python
"""Backup files on the database host: take a dump, publish it, apply retention.

Owns the on-disk contract shared with restore drills: ``<dir>/<name>-<ts>.<ext>``
published by rename only after an fsync, then ``<stem>.manifest.json`` written
atomically last (a file without a manifest is incomplete), and retention that
keeps the newest good backups and every backup named in ``<dir>/.in-use``.

The dump itself (action ``dump``) runs the engine's tool, optionally through a
compressor, into the temporary name, and checks the exit status of EVERY process
of the pipe (a dump that dies behind a compressor that exits 0 still fails), so
a partial file is never published. It also counts every table's rows exactly as
dumped: PostgreSQL in the snapshot pg_dump dumps (exported by a REPEATABLE READ
transaction, passed to ``pg_dump --snapshot``); MariaDB, whose dump snapshot no
other session can share, in the SQL stream itself as it passes to the file.
Runs on the database host (Python 3.8+, standard library only).
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: mhops_backup_files
short_description: Publish a finished backup with its manifest, or apply retention
options:
  action: {type: str, required: true, choices: [dump, publish, retention]}
  engine: {type: str, choices: [postgresql, mariadb], description: engine (dump)}
  dump_argv: {type: list, description: the dump tool and options, no output or snapshot (dump)}
  client_argv: {type: list, description: psql that counts the rows in the snapshot (dump)}
  compress: {type: str, default: none, choices: [none, gzip, zstd], description: for SQL dumps}
  compressors: {type: dict, description: compressor programs by name (dump)}
  timeout: {type: int, default: 21600, description: seconds before the dump is killed (dump)}
  temp: {type: path, description: finished dump under its temporary name (publish)}
  final: {type: path, description: final path of the dump (publish)}
  manifest: {type: dict, description: manifest fields known before publishing}
  dir: {type: path, description: the database's backup folder (retention)}
  name: {type: str, description: the database's logical name (retention)}
  keep: {type: int, default: 7, description: good backups to keep (at least 1)}
  assume_new: {type: bool, default: false, description: plan as if one more good backup existed}
"""

STAMP = r"\d{8}T\d{6}Z"
EXTS = ("dump", "sql", "sql.gz", "sql.zst")
COMPRESS_ARGS = {"gzip": ["-c", "-6"], "zstd": ["-q", "-c", "-3"]}
_END = "__MHOPS_END__"

# Every ordinary table's exact row count as one JSON object, in one statement so that
# it reads the transaction's snapshot once (inside pg_dump's exported snapshot here).
PG_COUNT_SQL = (
    "SELECT coalesce(json_object_agg(t, n ORDER BY t), '{}') FROM ("
    "SELECT n.nspname || '.' || c.relname AS t, (xpath('/row/c/text()', query_to_xml("
    "format('SELECT count(*) AS c FROM %I.%I', n.nspname, c.relname), false, true, "
    "'')))[1]::text::bigint AS n FROM pg_class c JOIN pg_namespace n ON n.oid = "
    "c.relnamespace WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg_toast%') x;")


class DumpError(Exception):
    """The dump failed; `stderr` holds what the failing process said."""

    def __init__(self, msg, stderr=""):
        super().__init__(msg)
        self.stderr = stderr


def _fsync_path(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def publish(temp, final, manifest):
    """fsync the dump, rename it into place, then write its manifest atomically."""
    if os.path.exists(final):
        raise ValueError(f"refusing to overwrite existing backup {final}")
    size = os.path.getsize(temp)
    if size == 0:
        raise ValueError(f"the dump tool wrote an empty file {temp}")
    os.chmod(temp, 0o600)  # patient data: the dump tools follow the umask
    _fsync_path(temp)
    sha = _sha256(temp)
    os.rename(temp, final)
    folder = os.path.dirname(final)
    _fsync_path(folder)
    manifest = dict(manifest, file=os.path.basename(final), sha256=sha, size=size)
    stem = os.path.basename(final)
    for ext in EXTS:
        if stem.endswith("." + ext):
            stem = stem[: -len(ext) - 1]
            break
    target = os.path.join(folder, stem + ".manifest.json")
    fd, tmp = tempfile.mkstemp(prefix="." + stem + ".", suffix=".manifest.tmp", dir=folder)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True, ensure_ascii=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.rename(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_path(folder)
    return manifest, target


class _Session:
    """An interactive psql / mariadb client fed line by line, so one transaction (and
    its snapshot) stays open while the dump runs beside it."""

    def __init__(self, argv):
        self.err = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the session
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, start_new_session=True)

    def ask(self, sql, marker):
        """Output lines of `sql` (everything printed before the marker statement)."""
        try:
            self.proc.stdin.write((sql + "\n" + marker + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        lines = []
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == _END:
                return lines
            lines.append(line)
        self.proc.wait()
        raise DumpError(f"the counting session ended ({_exit_text(self.proc.returncode)})",
                        _tail_of(self.err))

    def close(self, sql):
        try:
            self.proc.stdin.write(sql.encode())
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            _kill(self.proc)

    def kill(self):
        _kill(self.proc)


def _kill(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _tail_of(fh, n=1500):
    fh.seek(0)
    return fh.read().decode("utf-8", "replace").strip()[-n:]


def _exit_text(rc):
    return f"killed by signal {-rc}" if rc is not None and rc < 0 else f"exit {rc}"


def _start_pipe(argvs, output):
    """Start `argvs` as one pipe writing into the open file `output`; [(proc, stderr)]."""
    stages, upstream = [], None
    for i, argv in enumerate(argvs):
        err = tempfile.TemporaryFile()  # noqa: SIM115 - read after the process exits
        last = i == len(argvs) - 1
        proc = subprocess.Popen(argv, stdin=upstream or subprocess.DEVNULL,
                                stdout=output if last else subprocess.PIPE, stderr=err,
                                start_new_session=True)
        if upstream is not None:
            upstream.close()  # the next stage holds it; a dead reader gives the writer EPIPE
        upstream = proc.stdout
        stages.append((proc, err))
    return stages


def _check_stages(stages):
    """Every process of the pipe must have exited 0: the pipefail rule, for all stages."""
    out, failed = [], []
    for proc, err in stages:
        rc = proc.wait()
        name = os.path.basename(proc.args[0])
        out.append({"program": name, "rc": rc})
        if rc != 0:
            failed.append(f"{name} {_exit_text(rc)}: {_tail_of(err, 600) or '-'}")
    if failed:
        raise DumpError("dump pipe failed: " + "; ".join(failed), "\n".join(failed))
    return out


class SqlRowCounter:
    """Rows per table in a mariadb-dump/mysqldump SQL stream, counted as it is written.

    The dump is cut into whole statements (every one ends with ";\n"; string values
    never hold a raw newline, the tool escapes it), string literals are removed, and
    in each ``INSERT INTO `t` VALUES (...),(...);`` every "(" left is one row: values
    are literals (numbers, NULL, hex, strings), so parentheses only open rows. Works
    for one row per line (MariaDB 10.11+) and the older one-line extended inserts.
    ``CREATE TABLE`` makes an empty table count 0.
    """

    # An optional column list (--complete-insert) is skipped: rows start after VALUES.
    HEADER = re.compile(rb"^(?:(INSERT INTO)|CREATE TABLE) `((?:[^`]|``)+)`"
                        rb"(?(1)(?: \((?:`(?:[^`]|``)*`(?:, )?)*\))? VALUES)", re.M)
    # String values never hold a raw newline (the dump escapes it): a stray quote (in a
    # trigger body, a column name) cannot pair across lines. Limit: a table whose name
    # holds a quote (') is not counted right (a drill would then report the difference).
    STRING = re.compile(rb"'[^'\\\n]*(?:\\.[^'\\\n]*)*'")

    def __init__(self):
        self.tables, self.rest = {}, b""

    def feed(self, data):
        data = self.rest + data
        cut = data.rfind(b";\n") + 2
        if cut < 2:
            self.rest = data
            return
        self.rest = data[cut:]
        self._statements(data[:cut])

    def close(self):
        self._statements(self.rest)
        self.rest = b""
        return self.tables

    def _statements(self, block):
        if b"'" in block:
            block = self.STRING.sub(b"", block)
        pos = 0
        for m in self.HEADER.finditer(block):
            if m.start() < pos:
                continue
            name = m.group(2).replace(b"``", b"`").decode("utf-8", "replace")
            n = self.tables.setdefault(name, 0)
            end = block.find(b";", m.end())
            end = len(block) if end < 0 else end
            if m.group(1):
                self.tables[name] = n + block.count(b"(", m.end(), end)
            pos = end


def _mariadb_pipe(pipe, output, procs):
    """dump | (count rows here) | [compressor] > output; returns (stages, row counts)."""
    err = tempfile.TemporaryFile()  # noqa: SIM115 - read after the process exits
    dump_proc = subprocess.Popen(pipe[0], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err, start_new_session=True)
    procs.append(dump_proc)
    stages, sink = [(dump_proc, err)], output
    if len(pipe) > 1:
        cerr = tempfile.TemporaryFile()  # noqa: SIM115 - read after the process exits
        comp = subprocess.Popen(pipe[1], stdin=subprocess.PIPE, stdout=output, stderr=cerr,
                                start_new_session=True)
        procs.append(comp)
        stages.append((comp, cerr))
        sink = comp.stdin
    counter, failure = SqlRowCounter(), None
    try:
        for block in iter(lambda: dump_proc.stdout.read(1 << 20), b""):
            counter.feed(block)
            sink.write(block)
        counts = counter.close()
    except OSError as exc:  # the compressor died or the disk is full
        failure = exc
    finally:
        dump_proc.stdout.close()  # a dump still writing now gets EPIPE and fails
        if sink is not output:
            try:
                sink.close()
            except OSError as exc:
                failure = failure or exc
    if failure is not None:
        _check_stages(stages)  # names the stage that failed, if one did
        raise DumpError(f"writing the dump failed: {failure}")
    return stages, counts


def dump(p):
    """Run the dump into `temp`, counting the rows the dump holds (see the module doc)."""
    engine, temp, compress = p["engine"], p["temp"], p["compress"] or "none"
    argv = list(p["dump_argv"])
    if engine == "postgresql" and compress != "none":
        raise DumpError("pg_dump -Fc compresses by itself: compress must be none")
    pipe = [argv]
    if compress != "none":
        prog = (p["compressors"] or {}).get(compress) or compress
        if not (os.path.isabs(prog) or shutil.which(prog)):
            raise DumpError(f"compressor {prog} not found on this host")
        pipe.append([prog] + COMPRESS_ARGS[compress])
    started = time.monotonic()
    procs, expired = [], []

    def expire():
        expired.append(True)
        for x in procs:
            _kill(x)
    timer = threading.Timer(p["timeout"], expire)
    timer.daemon = True
    session = None
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        timer.start()
        with os.fdopen(fd, "wb") as output:
            if engine == "postgresql":
                session = _Session(p["client_argv"])
                procs.append(session.proc)
                snap = session.ask("SET idle_in_transaction_session_timeout = 0;\n"
                                   "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY;\n"
                                   "SELECT pg_export_snapshot();", "\\echo " + _END)
                snapshot = snap[-1].strip()
                pipe[0] = argv + ["--snapshot=" + snapshot, "--file=" + temp]
                stages = _start_pipe(pipe, subprocess.DEVNULL)
                procs.extend(s[0] for s in stages)
                # Counted while pg_dump runs: both read the same exported snapshot.
                counts = json.loads(session.ask(PG_COUNT_SQL, "\\echo " + _END)[-1])
                how = "dump_snapshot"
            else:
                snapshot = None
                stages, counts = _mariadb_pipe(pipe, output, procs)
                how = "dump_content"
            try:
                result = _check_stages(stages)
            finally:
                if expired:
                    raise DumpError(f"the dump took longer than {p['timeout']} s and was "
                                    "killed")
            # Only now: pg_dump must have imported the snapshot before it goes away.
            if session is not None:
                session.close("COMMIT;\n")
    except BaseException:
        for x in procs:
            _kill(x)
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    finally:
        timer.cancel()
    seconds = time.monotonic() - started
    return {"tables": counts, "tables_counted": how, "snapshot": snapshot,
            "stages": result, "compression": compress, "seconds": round(seconds, 3),
            "delta": str(datetime.timedelta(seconds=seconds)), "changed": True}


def list_backups(folder, name):
    """Every ``<name>-<ts>.<ext>`` in `folder`: (stamp, file, manifest or None, good)."""
    rx = re.compile(r"^{}-({})\.({})$".format(re.escape(name), STAMP,
                                          "|".join(re.escape(e) for e in EXTS)))
    found = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        m = rx.match(entry)
        if not m:
            continue
        path = os.path.join(folder, entry)
        mpath = os.path.join(folder, f"{name}-{m.group(1)}.manifest.json")
        manifest, good = None, False
        try:
            with open(mpath) as fh:
                manifest = json.load(fh)
            good = (manifest.get("file") == entry
                    and manifest.get("size") == os.path.getsize(path))
        except (OSError, ValueError, AttributeError):
            manifest = None
        found.append({"stamp": m.group(1), "file": entry, "path": path,
                      "manifest": mpath if manifest is not None else None, "good": good})
    return found


def read_in_use(folder):
    try:
        with open(os.path.join(folder, ".in-use")) as fh:
            return {line.strip() for line in fh if line.strip() and not line.startswith("#")}
    except FileNotFoundError:
        return set()


def retention_plan(backups, keep, in_use, assume_new=False):
    """Which good backups to delete: beyond the `keep` newest, never the newest good one,
    never one named in `in_use` (by file, stem or manifest name). Incomplete or
    mismatched backups are left alone for an operator to look at."""
    keep = max(1, int(keep))
    good = sorted((b for b in backups if b["good"]), key=lambda b: b["stamp"], reverse=True)
    slots = keep - 1 if assume_new else keep
    delete = []
    for i, b in enumerate(good):
        stem = b["file"].split(".", 1)[0]
        names = {b["file"], stem, stem + ".manifest.json"}
        if i == 0 or i < slots or names & in_use:
            continue
        delete.append(b)
    return delete


def retention(module, folder, name, keep, assume_new):
    backups = list_backups(folder, name)
    in_use = read_in_use(folder)
    delete = retention_plan(backups, keep, in_use, assume_new)
    if not module.check_mode:
        for b in delete:
            # Manifest first: an interrupted delete leaves an incomplete backup, never a
            # manifest pointing at nothing.
            if b["manifest"]:
                os.unlink(b["manifest"])
            os.unlink(b["path"])
        if delete:
            _fsync_path(folder)
    gone = {b["file"] for b in delete}
    return {
        "deleted": sorted(gone),
        "kept": [b["file"] for b in backups if b["good"] and b["file"] not in gone],
        "in_use": sorted(in_use),
        "incomplete": [b["file"] for b in backups if not b["good"]],
        "changed": bool(delete),
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "action": {"type": "str", "required": True,
                       "choices": ["dump", "publish", "retention"]},
            "engine": {"type": "str", "choices": ["postgresql", "mariadb"]},
            "dump_argv": {"type": "list", "elements": "str"},
            "client_argv": {"type": "list", "elements": "str"},
            "compress": {"type": "str", "default": "none", "choices": ["none", "gzip", "zstd"]},
            "compressors": {"type": "dict", "default": {}},
            "timeout": {"type": "int", "default": 21600},
            "temp": {"type": "path"},
            "final": {"type": "path"},
            "manifest": {"type": "dict", "default": {}},
            "dir": {"type": "path"},
            "name": {"type": "str"},
            "keep": {"type": "int", "default": 7},
            "assume_new": {"type": "bool", "default": False},
        },
        required_if=[("action", "dump", ("engine", "dump_argv", "temp")),
                     ("action", "publish", ("temp", "final")),
                     ("action", "retention", ("dir", "name"))],
        supports_check_mode=True,
    )
    p = module.params
    try:
        if p["action"] == "dump":
            if module.check_mode:
                module.exit_json(changed=True, tables={}, skipped=True)
            try:
                module.exit_json(**dump(p))
            except DumpError as exc:
                module.fail_json(msg=str(exc), stderr=exc.stderr)
        if p["action"] == "publish":
            if module.check_mode:
                module.exit_json(changed=True, manifest={}, path=p["final"])
            manifest, target = publish(p["temp"], p["final"], p["manifest"])
            module.exit_json(changed=True, manifest=manifest, manifest_path=target,
                             path=p["final"])
        module.exit_json(**retention(module, p["dir"], p["name"], p["keep"], p["assume_new"]))
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))


if __name__ == "__main__":
    main()
