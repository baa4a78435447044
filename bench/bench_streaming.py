#!/usr/bin/python3
"""Streaming benchmark (issue 13): big-ann-benchmarks' NeurIPS'23 delete_runbook
(msturing-10M-clustered, ranges scaled to the data) replayed over 100,000 points in k-means
cluster order through `nearline serve`, against hnswlib (Debian's python3-hnswlib, in RAM, its
own deletes: mark_deleted) replaying the same steps on the same data and threads in one run.

nearline runs with its default maintenance (background flush and compaction as a user gets them)
and a fresh capacity of 5,000 points (5% of the data; the default 100,000 would hold the whole 1:100
runbook in RAM), inside a cgroup-v1 memory cap below the size of its index files at the end of the
run where its RAM-resident part allows, so searches read from disk; hnswlib holds everything in RAM. Both get list size 100 (nearline L, hnswlib ef),
k=10, batches of 500 points per upsert and 500 ids per delete, the whole query set per search
step. Reported: mean and worst recall@10 over the search steps against exact ground truth over the
points live at that step, answers short of min(k, live), search QPS (batch), insert and delete
throughput, peak RSS. fio (4 KiB random reads, io_uring, O_DIRECT, QD32 x 2 jobs) runs right
before and after, since this disk is rate-limited in bursts.

Usage: bench/bench_streaming.py [--data ../shared/data] [--glove DIR] [--work DIR] [--n 100000]
       [--cap-mb N] [--datasets sift,glove]
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, 'tests', 'streaming'))
import runbook  # noqa: E402
from runbook_test import bvecs, kmeans_order  # noqa: E402

CG = '/sys/fs/cgroup/memory/nearline-stream'


def fvecs(path, rows=None):
    a = np.fromfile(path, np.int32)
    d = a[0]
    return a.reshape(-1, d + 1)[:rows, 1:].view(np.float32).copy()


def fio(path):
    out = subprocess.run(['fio', '--name=ceiling', f'--filename={path}', '--readonly', '--rw=randread', '--bs=4k',
                          '--direct=1', '--ioengine=io_uring', '--iodepth=32', '--numjobs=2', '--runtime=8',
                          '--time_based', '--group_reporting', '--output-format=json'],
                         check=True, capture_output=True, text=True).stdout
    return sum(j['read']['iops'] for j in json.loads(out)['jobs'])


def cgroup(cap):
    """A prefix command that runs the rest inside a memory cgroup capped at cap bytes."""
    if not os.path.isdir('/sys/fs/cgroup/memory'):
        print('bench_streaming: no cgroup v1 memory controller; nearline runs uncapped', file=sys.stderr)
        return [], False
    os.makedirs(CG, exist_ok=True)
    open(f'{CG}/memory.limit_in_bytes', 'w').write(str(cap))
    return ['sh', '-c', f'echo $$ > {CG}/tasks && exec "$@"', 'sh'], True


def steps_for(n):
    _, max_pts, steps = runbook.parse(os.path.join(ROOT, '..', 'shared', 'runbooks', 'delete_runbook.yaml'),
                                      'msturing-10M-clustered')
    return runbook.scaled(steps, max_pts, n)


def run_nearline(nl, work, X, Q, order, steps, cap, fresh):
    db = os.path.join(work, 'nl-db')
    shutil.rmtree(db, ignore_errors=True)
    prefix, capped = cgroup(cap) if cap else ([], False)
    srv = runbook.Server(nl, db, db + '.log', prefix=prefix)
    try:
        rp = runbook.Replay(srv, X, Q, 'cosine', k=10, L=100, order=order)
        rp.create(fresh_capacity=fresh)
        res = rp.run(steps)
        st = rp.stats()
        rss = srv.peak_rss()
    finally:
        srv.stop()
    disk = st.get('disk_bytes', 0)
    return summary('nearline (disk' + (f', capped {cap >> 20} MiB)' if capped else ', uncapped)'), rp, res, rss,
                   extra={'flushes': st.get('flushes'), 'compactions': st.get('compactions'), 'index_mb': disk / 2**20,
                          'retried': st.get('search_retries'), 'exhaustive': st.get('search_exhaustive'),
                          'segments': st.get('segments'),
                          # segment bytes written over those the flushes wrote (None before the counters existed)
                          'write_amp': ((st['flush_bytes'] + st['compaction_bytes']) / st['flush_bytes']
                                        if st.get('flush_bytes') else None)})


def hnsw_child(X, Q, order, steps, out):
    """hnswlib replaying the steps (in a child process, so its peak RSS is its own)."""
    import hnswlib
    n, d = X.shape
    ix = hnswlib.Index(space='cosine', dim=d)
    ix.init_index(max_elements=n, ef_construction=100, M=32)
    ix.set_num_threads(2)
    ix.set_ef(100)
    cur = np.full(n, -1, np.int64)
    recs, ins_s, del_s, srch_s, ins, dele, nsearch = [], 0.0, 0.0, 0.0, 0, 0, 0
    deleted = set()
    for i, st in enumerate(steps):
        op = st['operation']
        if op in ('insert', 'replace'):
            tags = order[st['start']:st['end']] if op == 'insert' else order[st['tags_start']:st['tags_end']]
            rows = tags if op == 'insert' else order[st['ids_start']:st['ids_end']][:len(tags)]
            t = time.time()
            for b in range(0, len(tags), 500):
                for lab in tags[b:b + 500]:
                    if int(lab) in deleted:  # hnswlib 0.6 cannot re-add a deleted label: un-delete, then update
                        ix.unmark_deleted(int(lab))
                        deleted.discard(int(lab))
                ix.add_items(X[rows[b:b + 500]], tags[b:b + 500])
            ins_s += time.time() - t
            ins += len(tags)
            cur[tags] = rows
        elif op == 'delete':
            ids = order[st['start']:st['end']]
            t = time.time()
            for lab in ids:
                if cur[lab] >= 0:
                    ix.mark_deleted(int(lab))
                    deleted.add(int(lab))
            del_s += time.time() - t
            dele += len(ids)
            cur[ids] = -1
        else:
            live = np.flatnonzero(cur >= 0)
            t = time.time()
            try:
                labels, _ = ix.knn_query(Q, k=10)
            except RuntimeError:  # fewer than k reachable for some query
                labels = np.full((len(Q), 10), -1)
            secs = time.time() - t
            srch_s += secs
            nsearch += len(Q)
            want = min(10, len(live))
            kth = runbook.kth_distances('cosine', Q, X[cur[live]], want)
            hits, short = 0, 0
            for qi in range(len(Q)):
                got = [int(x) for x in labels[qi] if x >= 0 and cur[x] >= 0]
                short += len(got) < want
                dd = runbook.exact_distances('cosine', Q[qi:qi + 1], X[cur[got]])[0] if got else []
                hits += min(want, int(sum(x <= kth[qi] + 1e-5 for x in dd)))
            recs.append({'step': i + 1, 'live': int(len(live)), 'recall': hits / (want * len(Q)), 'short': short})
    json.dump({'steps': recs, 'insert_s': ins_s, 'delete_s': del_s, 'search_s': srch_s, 'inserted': ins,
               'deleted': dele, 'searched': nsearch,
               'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}, open(out, 'w'))


def summary(name, rp, res, rss, extra=None):
    rec = [r['recall'] for r in res if r['live'] >= 10]
    ios = [r['ios'] for r in res if 'ios' in r]
    return {'system': name, 'mean': float(np.mean(rec)), 'worst': float(np.min(rec)), 'steps': len(res),
            'mean_ios': float(np.mean(ios)) if ios else None,
            'short': sum(len(r['short']) for r in res), 'deleted_returned': sum(len(r['deleted']) for r in res),
            'qps': rp.searched / rp.search_s, 'insert_pps': rp.inserted / rp.insert_s,
            'delete_ips': rp.deleted / rp.delete_s, 'rss_mb': rss / 2**20, 'per_step': [r['recall'] for r in res],
            **(extra or {})}


class _RP:  # the fields summary() reads, from hnsw_child's JSON
    def __init__(self, j):
        self.searched, self.search_s = j['searched'], j['search_s']
        self.inserted, self.insert_s, self.deleted, self.delete_s = j['inserted'], j['insert_s'], j['deleted'], j['delete_s']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--data', default=os.path.join(ROOT, '..', 'shared', 'data'))
    ap.add_argument('--glove', help='glove-100 directory (shared/data/recipes/glove-100.sh builds it)')
    ap.add_argument('--work', default='/tmp/nl-bench-streaming')
    ap.add_argument('--n', type=int, default=100000)
    ap.add_argument('--cap-mb', type=int, default=0, help='memory cap for nearline (0: 3/4 of a trial index)')
    ap.add_argument('--datasets', default='sift,glove')
    ap.add_argument('--fresh-capacity', type=int, default=5000,
                    help='the collection\'s fresh capacity: 5%% of the data, as 100K (the default) is of 2M '
                         'points; with the default the whole 1:100 runbook would live in RAM')
    ap.add_argument('--nearline', default=os.path.join(ROOT, 'build', 'tools', 'nearline'))
    ap.add_argument('--baseline', help='an older nearline binary replayed the same way in the same run, for ratios')
    ap.add_argument('--child', nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    report = {'date': time.strftime('%Y-%m-%d'), 'n': a.n, 'datasets': {}}
    for name in a.datasets.split(','):
        if name == 'sift':
            base = os.path.join(a.data, 'sift-images-420k')
            if not os.path.exists(os.path.join(base, 'base.bvecs')):
                print(f'{base}: not found, sift skipped')
                continue
            X = bvecs(os.path.join(base, 'base.bvecs'), a.n)
            Q = bvecs(os.path.join(base, 'query.bvecs'), 1000)
        elif name == 'glove':
            if not a.glove or not os.path.exists(os.path.join(a.glove, 'base.fvecs')):
                print('glove-100: --glove DIR not given or not built, skipped')
                continue
            X = fvecs(os.path.join(a.glove, 'base.fvecs'), a.n)
            Q = fvecs(os.path.join(a.glove, 'query.fvecs'), 1000)
        else:
            raise SystemExit(f'unknown dataset {name}')
        order = kmeans_order(X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9), 64, 20261201)
        steps = steps_for(len(X))
        np.save(os.path.join(a.work, 'X.npy'), X)
        np.save(os.path.join(a.work, 'Q.npy'), Q)
        np.save(os.path.join(a.work, 'order.npy'), order)
        # The cap: below the index nearline ends with (its segment files), found by a first
        # uncapped run when not given.
        rows = []
        fio_file = os.path.join(a.work, 'fio.dat')
        if not os.path.exists(fio_file) or os.path.getsize(fio_file) < 1 << 30:
            # Written, not fallocated: reads of unwritten extents never reach the device.
            subprocess.run(['dd', 'if=/dev/urandom', f'of={fio_file}', 'bs=1M', 'count=1024', 'status=none'],
                           check=True)
            os.sync()
        iops_before = fio(fio_file)
        cap = a.cap_mb << 20
        if not cap:
            trial = run_nearline(a.nearline, a.work, X, Q, order, steps, 0, a.fresh_capacity)
            cap = int(trial['index_mb'] * 0.75) << 20
            # The fresh index and the metadata store live in RAM by design: a cap below what
            # they need would only get the server killed. Then the cap is the trial's peak
            # RSS plus a quarter, and the table says so.
            need = int(trial['rss_mb'] * 1.25) << 20
            if need > cap:
                print(f'bench_streaming: peak RSS {trial["rss_mb"]:.0f} MiB exceeds 3/4 of the index '
                      f'({trial["index_mb"]:.0f} MiB): capping at {need >> 20} MiB', file=sys.stderr)
                cap = need
            trial['system'] += ' trial'
            rows.append(trial)
        rows.append(run_nearline(a.nearline, a.work, X, Q, order, steps, cap, a.fresh_capacity))
        if a.baseline:
            b = run_nearline(a.baseline, a.work, X, Q, order, steps, cap, a.fresh_capacity)
            b['system'] += ' baseline (' + a.baseline + ')'
            rows.append(b)
        out = os.path.join(a.work, 'hnsw.json')
        subprocess.run([sys.executable, __file__, '--child', a.work, out], check=True)
        j = json.load(open(out))
        res = [{'recall': r['recall'], 'live': r['live'], 'short': [0] * r['short'], 'deleted': []} for r in j['steps']]
        rows.append(summary('hnswlib M=32 (RAM)', _RP(j), res, j['rss'], {}))
        iops_after = fio(fio_file)
        report['datasets'][name] = {'rows': rows, 'fio_before': iops_before, 'fio_after': iops_after,
                                    'points': len(X), 'queries': len(Q), 'search_steps': len(res)}
        print(f'\n### {name}: {len(X)} points, {len(Q)} queries, {len(res)} search steps; fio {iops_before:.0f} -> '
              f'{iops_after:.0f} IOPS\n')
        print('| system | mean recall@10 | worst step | short answers | search QPS | mean reads | insert pts/s | delete ids/s | peak RSS MiB |')
        print('|---|---|---|---|---|---|---|---|---|')
        for r in rows:
            ios = f"{r['mean_ios']:.1f}" if r.get('mean_ios') is not None else '-'
            print(f"| {r['system']} | {r['mean']:.4f} | {r['worst']:.4f} | {r['short']} | {r['qps']:.0f} | {ios} | "
                  f"{r['insert_pps']:.0f} | {r['delete_ips']:.0f} | {r['rss_mb']:.0f} |")
        nl = [r for r in rows if r['system'].startswith('nearline') and 'trial' not in r['system']
              and 'baseline' not in r['system']][-1]
        base = [r for r in rows if 'baseline' in r['system']]
        if base:
            print(f"\nnearline / baseline: search QPS {nl['qps'] / base[0]['qps']:.2f}, mean reads "
                  f"{nl['mean_ios'] / base[0]['mean_ios']:.2f}, mean recall {nl['mean']:.4f} against {base[0]['mean']:.4f}")
        h = rows[-1]
        print(f"\nratios nearline / hnswlib: recall {nl['mean'] / h['mean']:.3f}, QPS {nl['qps'] / h['qps']:.2f}, "
              f"insert {nl['insert_pps'] / h['insert_pps']:.2f}, RSS {nl['rss_mb'] / h['rss_mb']:.2f}; "
              f"nearline: {nl.get('flushes')} flushes, {nl.get('compactions')} compactions, "
              f"{nl.get('retried')} queries searched again, {nl.get('exhaustive')} exhaustively, index {nl.get('index_mb', 0):.0f} MiB, "
              f"{nl.get('segments')} segments at the end, write amplification "
              f"{'%.2f' % nl['write_amp'] if nl.get('write_amp') else '-'}")
    json.dump(report, open(os.path.join(a.work, 'report.json'), 'w'), indent=1)


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        w, out = sys.argv[2], sys.argv[3]
        hnsw_child(np.load(os.path.join(w, 'X.npy')), np.load(os.path.join(w, 'Q.npy')),
                   np.load(os.path.join(w, 'order.npy')), steps_for(len(np.load(os.path.join(w, 'X.npy')))), out)
    else:
        main()
