"""Streaming runbooks (big-ann-benchmarks' NeurIPS'23 format) replayed through `nearline serve`.

A runbook is YAML: top-level keys are datasets, each with `max_pts` and numbered steps whose
`operation` is `insert` / `delete` (half-open row range `start`..`end`; a row number is also the
id), `search` (the whole query set), or `replace` (ids `tags_start`..`tags_end` get the vectors of
rows `ids_start`..`ids_end`). The format is flat enough to read without a YAML library, which
keeps the harness on the standard library plus numpy.

Shared by tests/streaming/runbook_test.py (the check) and bench/bench_streaming.py (the figures).
"""
import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import numpy as np


def parse(path, dataset=None):
    """Returns (dataset, max_pts, steps) for `dataset` (the first one when None); each step is a
    dict with 'operation' and its integer fields, in step-number order."""
    books, cur, step = {}, None, None
    for raw in open(path):
        line = raw.split('#', 1)[0].rstrip()
        if not line.strip():
            continue
        if not line.startswith(' '):
            cur = line.strip().rstrip(':')
            books[cur] = {'max_pts': None, 'steps': {}}
            step = None
            continue
        m = re.match(r'\s+max_pts:\s*(\d+)', line)
        if m and cur:
            books[cur]['max_pts'] = int(m.group(1))
            continue
        m = re.match(r'\s+(\d+):\s*$', line)
        if m and cur:
            step = {}
            books[cur]['steps'][int(m.group(1))] = step
            continue
        m = re.match(r'\s+(\w+):\s*"?([\w.]+)"?\s*$', line)
        if m and step is not None:
            k, v = m.group(1), m.group(2)
            step[k] = v if k == 'operation' else int(v)
    if not books:
        raise ValueError(f'{path}: no dataset')
    name = dataset or next(iter(books))
    if name not in books:
        raise ValueError(f'{path}: no dataset {name!r} (has {", ".join(books)})')
    b = books[name]
    steps = [b['steps'][i] for i in sorted(b['steps'])]
    for i, s in enumerate(steps):
        op = s.get('operation')
        need = {'insert': ('start', 'end'), 'delete': ('start', 'end'), 'search': (),
                'replace': ('tags_start', 'tags_end', 'ids_start', 'ids_end')}.get(op)
        if need is None or any(f not in s for f in need):
            raise ValueError(f'{path}: {name} step {i + 1}: bad step {s}')
    max_pts = b['max_pts'] or max([s.get('end', 0) for s in steps] + [s.get('ids_end', 0) for s in steps])
    return name, max_pts, steps


def scaled(steps, max_pts, n):
    """The steps with every range scaled from max_pts rows to n rows."""
    f = n / max_pts
    out = []
    for s in steps:
        t = dict(s)
        for k in ('start', 'end', 'tags_start', 'tags_end', 'ids_start', 'ids_end'):
            if k in t:
                t[k] = min(n, int(t[k] * f))
        out.append(t)
    return out


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Server:
    """`nearline serve` on a loopback port, stopped (SIGTERM, then SIGKILL) by stop()."""

    def __init__(self, nearline, db, log, extra=(), prefix=()):
        self.port = free_port()
        self.base = f'http://127.0.0.1:{self.port}'
        self.proc = subprocess.Popen([*prefix, nearline, 'serve', '--db', db, '--listen', f'127.0.0.1:{self.port}', *extra],
                                     stdout=open(log, 'ab'), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f'nearline serve exited with {self.proc.returncode}; see {log}')
            try:
                with urllib.request.urlopen(self.base + '/readyz', timeout=1) as r:
                    if r.status == 200:
                        return
            except Exception:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError('nearline serve did not become ready in 30 s')

    def call(self, method, path, body=None, timeout=600):
        req = urllib.request.Request(self.base + '/v1' + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={'Content-Type': 'application/json'})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b'{}')
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b'{}')

    def write(self, path, body, tries=60):
        """A write, retried while the server answers 503 (back-pressure), as a client would."""
        for _ in range(tries):
            s, r = self.call('POST', path, body)
            if s != 503:
                return s, r
            time.sleep(0.5)
        return s, r

    def peak_rss(self):
        """The server's peak resident set (VmHWM) in bytes, or 0 when it cannot be read."""
        try:
            for line in open(f'/proc/{self.proc.pid}/status'):
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def exact_distances(metric, Q, V):
    """Distances as nearline scores them: l2 squared, -ip, or 1 - cosine (float64)."""
    Q = Q.astype(np.float64)
    V = V.astype(np.float64)
    if metric == 'l2':
        return (Q * Q).sum(1)[:, None] - 2 * Q @ V.T + (V * V).sum(1)[None, :]
    if metric == 'ip':
        return -(Q @ V.T)
    Qn = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-30)
    Vn = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-30)
    return 1 - Qn @ Vn.T


def kth_distances(metric, Q, V, k, chunk=200):
    """Each query's k-th smallest exact distance to the rows of V (float64, chunks of queries
    so that a 1,000 x 100,000 matrix never stands in memory whole)."""
    out = np.empty(len(Q))
    for a in range(0, len(Q), chunk):
        D = exact_distances(metric, Q[a:a + chunk], V)
        out[a:a + chunk] = np.partition(D, k - 1, axis=1)[:, k - 1]
    return out


class Replay:
    """Replays steps over rows X (positions mapped to rows by `order`), checking every search
    against exact ground truth over the points live at that step. Records, per search step: live
    points, short answers, deleted or unknown ids returned, scores that match no written vector,
    recall@k (a result counts when its exact distance is within the k-th true one)."""

    def __init__(self, srv, X, Q, metric, k=10, L=64, batch=500, order=None, collection='t'):
        self.srv, self.X, self.Q, self.metric, self.k, self.L, self.batch = srv, X, Q, metric, k, L, batch
        self.order = np.arange(len(X)) if order is None else order
        self.c = collection
        self.cur = np.full(len(X), -1, np.int64)  # id -> row of its current vector, -1 absent
        # Each query's nearest row of the whole data set: while no live point holds that row,
        # the query's own neighbourhood is empty (not inserted yet, or deleted) and its true
        # neighbours are far points spread over other clusters.
        self.home = np.concatenate([np.argmin(exact_distances(metric, Q[a:a + 200], X), axis=1)
                                    for a in range(0, len(Q), 200)])
        self.steps = []
        self.insert_s = self.delete_s = self.search_s = 0.0
        self.inserted = self.deleted = self.searched = 0

    def create(self, shards=1, **index):
        body = {'dim': int(self.X.shape[1]), 'metric': self.metric, 'dtype': 'f32', 'shards': shards}
        if index:
            body['index'] = index
        s, r = self.srv.call('PUT', f'/collections/{self.c}', body)
        if s not in (200, 201):
            raise RuntimeError(f'create: {s} {r}')

    def _upsert(self, ids, rows):
        t = time.time()
        for b in range(0, len(ids), self.batch):
            pts = [{'id': int(i), 'vector': self.X[r].tolist()} for i, r in zip(ids[b:b + self.batch], rows[b:b + self.batch])]
            s, r = self.srv.write(f'/collections/{self.c}/points', {'points': pts})
            if s not in (200, 201):
                raise RuntimeError(f'upsert: {s} {r}')
            self.cur[ids[b:b + self.batch]] = rows[b:b + self.batch]
        self.insert_s += time.time() - t
        self.inserted += len(ids)

    def _delete(self, ids):
        t = time.time()
        for b in range(0, len(ids), self.batch):
            s, r = self.srv.write(f'/collections/{self.c}/points/delete', {'ids': [int(i) for i in ids[b:b + self.batch]]})
            if s != 200:
                raise RuntimeError(f'delete: {s} {r}')
            self.cur[ids[b:b + self.batch]] = -1
        self.delete_s += time.time() - t
        self.deleted += len(ids)

    def run(self, steps, log=None):
        for i, st in enumerate(steps):
            op = st['operation']
            if op == 'insert':
                pos = self.order[st['start']:st['end']]
                self._upsert(pos, pos)
            elif op == 'delete':
                self._delete(self.order[st['start']:st['end']])
            elif op == 'replace':
                tags = self.order[st['tags_start']:st['tags_end']]
                src = self.order[st['ids_start']:st['ids_end']]
                m = min(len(tags), len(src))
                self._upsert(tags[:m], src[:m])
            else:
                self.steps.append(self._search(i + 1))
                if log:
                    log(self.steps[-1])
        return self.steps

    def reads(self):
        """The server's sector reads so far (nearline_search_ios_total in /metrics)."""
        try:
            with urllib.request.urlopen(self.srv.base + '/metrics', timeout=60) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith('nearline_search_ios_total '):
                        return int(line.split()[1])
        except Exception:
            pass
        return 0

    def stats(self):
        s, r = self.srv.call('GET', f'/collections/{self.c}')
        return r.get('stats', {}) if s == 200 else {}

    def _search(self, step):
        live = np.flatnonzero(self.cur >= 0)
        k, nq = self.k, len(self.Q)
        before = self.stats()
        ios0 = self.reads()
        t = time.time()
        s, r = self.srv.call('POST', f'/collections/{self.c}/search/batch',
                             {'vectors': self.Q.tolist(), 'k': k, 'L': self.L, 'with_metadata': False})
        secs = time.time() - t
        if s != 200:
            raise RuntimeError(f'search at step {step}: {s} {r}')
        self.search_s += secs
        self.searched += nq
        want = min(k, len(live))
        after = self.stats()
        rec = {'step': step, 'live': int(len(live)), 'short': [], 'deleted': [], 'bad_score': [], 'recall': 1.0,
               'seconds': secs, 'ios': (self.reads() - ios0) / max(nq, 1), 'homed': 0, 'recall_homed': 1.0,
               'recall_away': None, 'segments': after.get('segments', 0), 'tombstones': after.get('tombstones', 0),
               'retried': after.get('search_retries', 0) - before.get('search_retries', 0),
               'exhaustive': after.get('search_exhaustive', 0) - before.get('search_exhaustive', 0)}
        if len(live) == 0:
            rec['short'] = [(qi, len(a)) for qi, a in enumerate(r['results']) if a]
            return rec
        kth = kth_distances(self.metric, self.Q, self.X[self.cur[live]], want)
        row_live = np.zeros(len(self.X), bool)
        row_live[self.cur[live]] = True
        homed = row_live[self.home]
        hits = 0
        per_q = np.zeros(nq)
        for qi, ans in enumerate(r['results']):
            ids = [h['id'] for h in ans]
            if len(ids) < want:
                rec['short'].append((qi, len(ids)))
            if len(set(ids)) != len(ids):
                rec['bad_score'].append((qi, 'duplicate id'))
            known = [h for h in ans if isinstance(h['id'], int) and 0 <= h['id'] < len(self.cur) and self.cur[h['id']] >= 0]
            rec['deleted'] += [(qi, h['id']) for h in ans if h not in known]
            if not known:
                continue
            d = exact_distances(self.metric, self.Q[qi:qi + 1], self.X[self.cur[[h['id'] for h in known]]])[0]
            score = np.array([h['score'] for h in known])
            off = np.abs(score - d) > 1e-3 * (1 + np.abs(d))
            rec['bad_score'] += [(qi, known[j]['id'], float(score[j]), float(d[j])) for j in np.flatnonzero(off)]
            good = int(np.sum((d <= kth[qi] + 1e-5 * (1 + abs(kth[qi]))) & ~off))
            hits += min(good, want)
            per_q[qi] = min(good, want) / want
        rec['homed'] = int(homed.sum())
        rec['recall_homed'] = float(per_q[homed].mean()) if homed.any() else 1.0
        rec['recall_away'] = float(per_q[~homed].mean()) if (~homed).any() else None
        rec['recall'] = hits / (want * nq)
        return rec
