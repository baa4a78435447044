# Entry points for people and CI. Every target installs what is missing first
# (scripts/install-deps.sh is a no-op when everything is present).
BUILD_DIR ?= build
ASAN_DIR  ?= build-asan
JOBS      ?= $(shell nproc)

.PHONY: all deps build run cluster-demo test test-release test-asan test-streaming tsan fuzz bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD_DIR) -j$(JOBS)

# The product on an embedded default: see scripts/demo.sh.
run: build
	@bash scripts/demo.sh $(BUILD_DIR)

# Three nodes and ZooKeeper on loopback: a sharded collection, searches through each
# node, one node killed (a partial answer), everything stopped (docs/cluster.md).
cluster-demo: build
	@bash scripts/cluster-demo.sh $(BUILD_DIR)

# Every test on the release build, then the unit tests again under ASan+UBSan.
test: test-release test-asan

test-release: build
	cd $(BUILD_DIR) && ctest --output-on-failure

test-asan: deps
	@cmake -S . -B $(ASAN_DIR) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEARLINE_SANITIZE=ON >/dev/null
	@cmake --build $(ASAN_DIR) -j$(JOBS)
	cd $(ASAN_DIR) && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		ctest --output-on-failure -L unit

# The long streaming check (not part of `make test`, which runs the short one): the
# generated runbook at 100K points and big-ann-benchmarks' delete and clustered runbooks
# over sift-images-420k, through the server, every search against exact ground truth.
test-streaming: build
	/usr/bin/python3 tests/streaming/runbook_test.py $(BUILD_DIR)/tools/nearline --long

# ThreadSanitizer over the engine's concurrency (writers, a searcher, background flushes
# and compactions) through the ingest driver at small scale. Not part of `make test`:
# Criterion cannot start under TSan, and RocksDB from Debian is uninstrumented
# (tests/tsan.supp). Fails on any race reported in nearline's code.
tsan: deps
	@cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEARLINE_ASSERTS=ON -DCMAKE_C_FLAGS="-fsanitize=thread -g" \
		-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread >/dev/null
	@cmake --build build-tsan -j$(JOBS) --target nearline nl_bench_ingest
	@mkdir -p build-tsan/data
	build-tsan/tools/nearline gen --n 20000 --dim 32 --type f32 --queries 100 --queries-out build-tsan/data/q.fbin \
		--out build-tsan/data/x.fbin >/dev/null
	TSAN_OPTIONS="halt_on_error=1 suppressions=$(CURDIR)/tests/tsan.supp" build-tsan/bench/nl_bench_ingest \
		--input build-tsan/data/x.fbin --queries build-tsan/data/q.fbin --db build-tsan/data/db --fresh 1000 --writers 2 >/dev/null
	@echo "tsan: no data race in nearline's code"

# libFuzzer (coverage-guided) over the network decoders (filters, protobuf bodies) and the
# storage readers (op-log entries, segment files, snapshot pieces), FUZZ_SECONDS each. `make
# test` runs the same targets for a short time without libFuzzer (tests/fuzz/replay_main.c).
FUZZ_SECONDS ?= 60
fuzz:
	@bash scripts/install-deps.sh --fuzz
	@cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DNEARLINE_SANITIZE=ON \
		-DNEARLINE_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j$(JOBS) --target fuzz_decoders fuzz_storage
	@mkdir -p build-fuzz/corpus build-fuzz/corpus_storage
	build-fuzz/tests/fuzz_decoders -max_total_time=$(FUZZ_SECONDS) -max_len=4096 build-fuzz/corpus tests/fuzz/corpus
	build-fuzz/tests/fuzz_storage -max_total_time=$(FUZZ_SECONDS) -max_len=65536 build-fuzz/corpus_storage \
		tests/fuzz/corpus_storage

bench: build
	@bash scripts/install-deps.sh --bench
	/usr/bin/python3 bench/bench_memory.py
	/usr/bin/python3 bench/bench_disk.py $(if $(GLOVE),--glove $(GLOVE))
	/usr/bin/python3 bench/bench_ingest.py
	/usr/bin/python3 bench/bench_streaming.py $(if $(GLOVE),--glove $(GLOVE))
	/usr/bin/python3 bench/bench_cluster.py
	/usr/bin/python3 bench/bench_replication.py
	/usr/bin/python3 bench/bench_rebalance.py
	/usr/bin/python3 bench/bench_codes.py --faiss

clean:
	rm -rf $(BUILD_DIR) $(ASAN_DIR) build-fuzz
