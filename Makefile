# mongoose_event_pusher: `make demo` runs the demo, `make test` runs every test.
# Each target installs what it needs first (idempotently), so a fresh machine works.

SHELL := /bin/bash
.DEFAULT_GOAL := test

APT_PACKAGES := erlang-nox erlang-dev erlang-common-test erlang-dialyzer erlang-tools \
                erlang-jiffy rebar3
# The demo, the benchmark, the reliability run and the lints run in the `tools' profile:
# the test profile's modules plus tools/ (rebar.config).
ERL_RUN := erl -noshell -pa _build/tools/lib/*/ebin

.PHONY: setup venv rabbitmq postgres build test cargo-test ct erlang-strict demo bench lint clean \
        otp27-root otp27-strict ct-otp27

# Debian packages, installed only when one is missing.
setup:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# Python tools in _build/venv: moto's SNS/SQS emulator (moto_server) and boto3, for
# test/support/sns_emulator.erl and test/support/sns_emulator.py. Pinned; the stamp file names
# the pins, so changing one reinstalls and an installed venv costs only a test -f.
# Debian's python3-venv is installed when `python3 -m venv` lacks ensurepip.
VENV := _build/venv
MOTO_VERSION := 5.2.5
BOTO3_VERSION := 1.44.8
VENV_STAMP := $(VENV)/.installed-moto-$(MOTO_VERSION)-boto3-$(BOTO3_VERSION)
venv:
	@if [ ! -f $(VENV_STAMP) ] || [ ! -x $(VENV)/bin/moto_server ]; then \
	  echo "creating $(VENV) (moto $(MOTO_VERSION), boto3 $(BOTO3_VERSION))"; \
	  rm -rf $(VENV); mkdir -p _build; \
	  if ! python3 -m venv $(VENV) 2>/dev/null; then \
	    rm -rf $(VENV); \
	    dpkg-query -W -f='$${Status}' python3-venv 2>/dev/null | grep -q "ok installed" || { \
	      echo "installing: python3-venv"; \
	      apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv; }; \
	    python3 -m venv $(VENV) 2>/dev/null || { rm -rf $(VENV); /usr/bin/python3 -m venv $(VENV); } || exit 1; \
	  fi; \
	  $(VENV)/bin/pip install -q --disable-pip-version-check \
	    "moto[server]==$(MOTO_VERSION)" "boto3==$(BOTO3_VERSION)" || exit 1; \
	  touch $(VENV_STAMP); \
	fi

# RabbitMQ on 127.0.0.1:5672 (guest/guest) for the rabbit backend: installed and
# started only when nothing answers there.
rabbitmq:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then \
	  command -v rabbitmq-server >/dev/null || { apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rabbitmq-server; }; \
	  echo "starting RabbitMQ"; rabbitmq-server -detached; \
	  timeout 120 rabbitmqctl await_startup >/dev/null; \
	fi

# PostgreSQL on 127.0.0.1:5432 for the rdbms push backend (test/push_rdbms_SUITE):
# installed and started only when nothing answers there. A fresh install gets user
# postgres with password postgres and a database test, which is what
# mongoose_rdbms:default_conninfo/0 uses (PG_CONNINFO overrides it).
postgres:
	@if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then \
	  ls /etc/postgresql/*/main/postgresql.conf >/dev/null 2>&1 || { apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql; }; \
	  ver=$$(ls /etc/postgresql | sort -V | tail -n 1); \
	  pg_ctlcluster $$ver main status >/dev/null 2>&1 || { echo "starting PostgreSQL $$ver"; \
	    pg_ctlcluster $$ver main start || exit 1; }; \
	  for i in $$(seq 60); do (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null && break; sleep 1; done; \
	  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" && \
	  { su postgres -c "psql -tA -c \"SELECT 1 FROM pg_database WHERE datname = 'test'\"" | grep -q 1 || \
	    su postgres -c "createdb test"; }; \
	fi

build: setup
	cargo build --release --workspace
	rebar3 as test compile
	rebar3 as tools compile

cargo-test: setup rabbitmq
	cargo test --release --workspace --quiet

# Ends with the number of cases each suite ran (tools/ct_summary.sh), pass or fail.
ct: build erlang-strict rabbitmq postgres venv
	@mkdir -p _build/ct_logs && touch _build/ct_logs/.make_ct_started
	@status=0; rebar3 as test ct || status=$$?; \
	  tools/ct_summary.sh _build/ct_logs test _build/ct_logs/.make_ct_started || status=1; \
	  exit $$status

# Production modules with every warning an error and specs on all exports, compiled
# against the stand-in's behaviours (as inside MongooseIM).
erlang-strict: build
	@mkdir -p _build/strict
	erlc -o _build/strict -pa _build/test/lib/mongoose_event_pusher/ebin \
	  -I erlang/include -I test/mim/include +warn_missing_spec +warnings_as_errors erlang/src/*.erl

# The same on OTP 27 (MongooseIM 6.4 requires OTP 26 or later): Debian 13's packages in
# a debootstrap root under _build, made once (1-2 minutes) and reused; `otp27-strict`
# compiles erlang/src as erlang-strict does and everything the suites need.
otp27-root:
	tools/otp27.sh root

otp27-strict: build otp27-root
	tools/otp27.sh compile

ct-otp27: otp27-strict rabbitmq postgres venv
	tools/otp27.sh ct

test: cargo-test ct ct-otp27 lint

# The demo uses the programs `build` just made (no second cargo run inside it, which
# could wait minutes on a busy machine).
demo: build rabbitmq venv
	AMQP_PROBE=$(CURDIR)/target/release/amqp_probe TOML2TERM=$(CURDIR)/target/release/toml2term \
	  $(ERL_RUN) -eval 'case event_pusher_demo:main() of ok -> halt(0); _ -> halt(1) end.'

bench: build rabbitmq venv
	$(ERL_RUN) -eval 'event_pusher_bench:main(), halt(0).'

# Fault scenarios against real servers on loopback, one row each (README, Reliability);
# writes _build/reliability.md. A measurement like bench: not part of `make test`, and
# it exits non-zero only when the table could not be made (a FAIL verdict is a row).
.PHONY: reliability
reliability: build rabbitmq
	AMQP_PROBE=$(CURDIR)/target/release/amqp_probe TOML2TERM=$(CURDIR)/target/release/toml2term \
	  $(ERL_RUN) -eval 'case event_pusher_reliability:main() of ok -> halt(0); _ -> halt(1) end.'

# Formatting, lints and Dialyzer over the production code, the stand-in and the tools;
# then xref: production code calls only OTP and MongooseIM 6.4's API (tools/mim_api_check),
# and every Erlang folder calls only its own or a lower layer (tools/layering_check).
# (Dialyzer runs on the ebin directly: `rebar3 ct` also compiles the stand-in into its
# extras directory, and rebar3's dialyzer would see every stand-in module twice.)
PLT := _build/otp_$(shell erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().')_2.plt
lint: build
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	@test -f $(PLT) || { echo "building $(PLT) (once, a few minutes)"; \
	  dialyzer --build_plt --output_plt $(PLT) --apps erts kernel stdlib compiler crypto \
	    public_key ssl inets tools common_test jiffy mnesia; }
	dialyzer --plt $(PLT) _build/tools/lib/mongoose_event_pusher/ebin
	$(ERL_RUN) -eval 'case mim_api_check:main() of ok -> halt(0); _ -> halt(1) end.'
	$(ERL_RUN) -eval 'case layering_check:main() of ok -> halt(0); _ -> halt(1) end.'

clean:
	rm -rf _build target erlang/priv/*.so
