# make demo: the quickstart end to end; make test: the test suite. Both install what they need into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow proto install bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,export,tensorboard,plot]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m protonet quickstart

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Regenerate protonet/caffe_pb2.py from proto/caffe.proto (tests fail when it is stale).
proto: $(STAMP)
	$(BIN)/pip install -q grpcio-tools
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=protonet proto/caffe.proto

bench: $(STAMP)
	for b in bench/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info
