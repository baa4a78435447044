"""nearline — a client for the nearline vector database's HTTP API (docs/api.md).

Standard library only. Errors from the server are raised as NearlineError carrying the
HTTP status, the server's error code and message, and the request id:

    import nearline
    db = nearline.Client("http://127.0.0.1:7700", api_key=None)
    db.create_collection("docs", dim=384, metric="cosine")
    db.upsert("docs", [{"id": 1, "vector": [...], "metadata": {"lang": "en"}}])
    hits = db.search("docs", [...], k=10, filter={"field": "lang", "eq": "en"})
    for h in hits:
        print(h["id"], h["score"], h["metadata"])

Upserts are sent in batches (batch_size points a request); a 503 (the server is
overloaded or its fresh index is full) is retried with back-off, honouring Retry-After,
up to `retries` times.
"""
import http.client
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request

__all__ = ["Client", "NearlineError", "Results"]
__version__ = "0.1.0"


class Results(list):
    """Search results (a list of {"id", "score", "metadata"}), with what a cluster says of
    them: `partial` is True when some shards did not answer in time, and `missing_shards`
    names them (a single node always answers complete)."""

    def __init__(self, answer):
        super().__init__(answer.get("results", []))
        self.partial = bool(answer.get("partial", False))
        self.missing_shards = list(answer.get("missing_shards", []))


class NearlineError(Exception):
    """An error answer from the server (or a transport failure, status 0)."""

    def __init__(self, status, code, message, request_id=None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id


class Client:
    def __init__(self, url="http://127.0.0.1:7700", api_key=None, timeout=30.0, retries=5, cafile=None,
                 insecure=False):
        """url: the server's base URL. api_key: sent as a Bearer token. cafile: a CA (or the
        server's self-signed certificate) to trust for https; insecure skips verification."""
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self._ctx = None
        if self.url.startswith("https://"):
            self._ctx = ssl.create_default_context(cafile=cafile)
            if insecure:
                self._ctx.check_hostname = False
                self._ctx.verify_mode = ssl.CERT_NONE

    # ------------------------------------------------------------------ transport

    def _request(self, method, path, body=None, retry=False):
        data = None if body is None else json.dumps(body).encode()
        attempt = 0
        while True:
            req = urllib.request.Request(self.url + path, data=data, method=method)
            req.add_header("Accept", "application/json")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if self.api_key:
                req.add_header("Authorization", "Bearer " + self.api_key)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx) as resp:
                    raw = resp.read()
                    ctype = resp.headers.get("Content-Type", "")
                    return json.loads(raw) if ctype.startswith("application/json") else raw.decode()
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    err = json.loads(raw)["error"]
                    code, msg, rid = err.get("code"), err.get("message"), err.get("request_id")
                except (ValueError, KeyError, TypeError):
                    code, msg, rid = "http_error", raw.decode(errors="replace")[:200], None
                if e.code == 503 and retry and attempt < self.retries:
                    attempt += 1
                    try:
                        wait = float(e.headers.get("Retry-After", "1"))
                    except ValueError:
                        wait = 1.0
                    time.sleep(min(wait, 30.0) * (1.5 ** (attempt - 1)))
                    continue
                raise NearlineError(e.code, code, msg, rid) from None
            except urllib.error.URLError as e:
                raise NearlineError(0, "unreachable", str(e.reason)) from None
            except (OSError, http.client.HTTPException) as e:  # reset, closed mid-response, timeout
                raise NearlineError(0, "connection_failed", str(e) or type(e).__name__) from None

    @staticmethod
    def _q(name):
        return urllib.parse.quote(str(name), safe="")

    # ------------------------------------------------------------------ collections

    def create_collection(self, name, dim, metric="l2", dtype="f32", shards=1, index=None, replicas=None,
                          write_quorum=None):
        """Creates a collection; index: optional {"R", "L", "alpha", "pq_bytes", "fresh_capacity"}.
        In cluster mode, replicas (1..5) and write_quorum ("all" or "majority")."""
        body = {"dim": dim, "metric": metric, "dtype": dtype, "shards": shards}
        if index:
            body["index"] = index
        if replicas is not None:
            body["replicas"] = replicas
        if write_quorum is not None:
            body["write_quorum"] = write_quorum
        return self._request("PUT", "/v1/collections/" + self._q(name), body)

    def list_collections(self):
        return self._request("GET", "/v1/collections")["collections"]

    def describe(self, name):
        return self._request("GET", "/v1/collections/" + self._q(name))

    def drop_collection(self, name):
        return self._request("DELETE", "/v1/collections/" + self._q(name))

    # ------------------------------------------------------------------ points

    def upsert(self, name, points, batch_size=1000):
        """points: an iterable of {"id", "vector", "metadata"?}. Returns how many were upserted.
        Each batch is applied all or nothing; a failing batch raises (earlier ones stay)."""
        total, batch = 0, []
        for p in points:
            batch.append(p)
            if len(batch) >= batch_size:
                total += self._request("POST", f"/v1/collections/{self._q(name)}/points", {"points": batch},
                                       retry=True)["upserted"]
                batch = []
        if batch:
            total += self._request("POST", f"/v1/collections/{self._q(name)}/points", {"points": batch},
                                   retry=True)["upserted"]
        return total

    def delete(self, name, ids=None, filter=None):
        """Deletes by ids or by a filter (one of them). Returns how many were deleted."""
        if (ids is None) == (filter is None):
            raise ValueError("give exactly one of ids and filter")
        body = {"ids": list(ids)} if ids is not None else {"filter": filter}
        return self._request("POST", f"/v1/collections/{self._q(name)}/points/delete", body, retry=True)["deleted"]

    def get(self, name, id):
        """{"id", "vector", "metadata"} of one point; NearlineError(404) when absent."""
        path = f"/v1/collections/{self._q(name)}/points/{self._q(id)}"
        if isinstance(id, str):
            path += "?id_type=string"
        return self._request("GET", path)

    # ------------------------------------------------------------------ search

    @staticmethod
    def _search_options(body, L, timeout_ms, require_complete):
        for key, v in (("L", L), ("timeout_ms", timeout_ms), ("require_complete", require_complete)):
            if v is not None:
                body[key] = v
        return body

    def search(self, name, vector, k=10, filter=None, L=None, with_metadata=True, timeout_ms=None,
               require_complete=None):
        """The k nearest points, nearest first, as Results (a list of {"id", "score",
        "metadata"} with .partial and .missing_shards). In a cluster, timeout_ms bounds the
        search (default 1000) and require_complete=True turns a partial answer into a 503
        NearlineError."""
        body = {"vector": list(vector), "k": k, "with_metadata": with_metadata}
        if filter is not None:
            body["filter"] = filter
        self._search_options(body, L, timeout_ms, require_complete)
        return Results(self._request("POST", f"/v1/collections/{self._q(name)}/search", body))

    def search_batch(self, name, vectors, k=10, filter=None, filters=None, L=None, with_metadata=True,
                     timeout_ms=None, require_complete=None):
        """Several queries in one request: a Results of result lists (.partial and
        .missing_shards for the whole batch)."""
        body = {"vectors": [list(v) for v in vectors], "k": k, "with_metadata": with_metadata}
        if filter is not None:
            body["filter"] = filter
        if filters is not None:
            body["filters"] = filters
        self._search_options(body, L, timeout_ms, require_complete)
        return Results(self._request("POST", f"/v1/collections/{self._q(name)}/search/batch", body))

    # ------------------------------------------------------------------ operations

    def health(self):
        return self._request("GET", "/healthz")

    def ready(self):
        try:
            self._request("GET", "/readyz")
            return True
        except NearlineError:
            return False

    def metrics(self):
        return self._request("GET", "/metrics")
