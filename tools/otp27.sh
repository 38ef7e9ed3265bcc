#!/usr/bin/env bash
# Erlang/OTP 27, as Debian 13 (trixie) packages it, beside the host's OTP 25: MongooseIM
# 6.4 requires OTP 26 or later, so `make test` also compiles and tests on 27.
#
#   tools/otp27.sh root          the OTP 27 runtime in _build/otp27-root (cached)
#   tools/otp27.sh compile       strict compile of erlang/src, then everything CT needs
#   tools/otp27.sh ct [--suite NAME[,NAME] [--case NAME[,NAME]]]
#                                the Common Test suites on OTP 27 (logs: _build/ct_logs_otp27)
#
# The root is a `debootstrap --variant=minbase` Debian 13 with only the Erlang packages
# the tests need, unpacked (`dpkg -x`): erlang-common-test depends on erlang-debugger,
# erlang-observer and wx, whose configuration fails in a minimal root, and nothing here
# runs their code. OTP 27 needs trixie's glibc, so its executables are pointed at the
# root's dynamic loader and libraries (patchelf: interpreter and rpath) and its start
# scripts at the root's OTP. The VM thus runs on the host directly: the tests see the
# same files, users, network and programs (rabbitmqctl, moto's venv, setpriv, cargo) as
# the OTP 25 run, and nothing needs mounting or cleaning up. The NIF and the Rust
# programs are the host's builds, loaded or spawned by the OTP 27 VM.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=$REPO/_build/otp27-root
ERLANG=$ROOT/usr/lib/erlang
BIN=$ERLANG/bin
OUT=$REPO/_build/otp27
CURRENT=$OUT/current # the last complete build (a link into $OUT, swapped atomically)
APP=$CURRENT/lib/mongoose_event_pusher
COMPILE_STAMP=$CURRENT/.compiled
CT_LOGS=$REPO/_build/ct_logs_otp27
SUITE=trixie
PACKAGES=(erlang-base erlang-common-test erlang-tools erlang-runtime-tools erlang-crypto
          erlang-public-key erlang-asn1 erlang-ssl erlang-inets erlang-mnesia
          erlang-syntax-tools erlang-jiffy erlang-dev
          libjs-jquery libjs-jquery-tablesorter) # the last two: CT's HTML logs link them
# What the root was made from; a different recipe (or repository path, which the
# patched executables name) makes a new root.
RECIPE="$SUITE minbase; ${PACKAGES[*]}; root $ROOT; recipe 1"
STAMP=$ROOT/.otp27-ready
INCLUDES=(-I "$REPO/erlang/include" -I "$REPO/test/mim/include")

die() { echo "otp27: $*" >&2; exit 1; }

root_is_ready() { [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$RECIPE" ]; }

# Host packages, installed only when missing (as the Makefile's setup does).
ensure_host_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
}

# The Debian archive the host's apt uses (its main suite), which serves trixie too.
debian_mirror() {
    local codename uri
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
    uri=$(awk -v c="$codename" '$1 == "deb" {
              for (i = 2; i < NF; i++) if ($i ~ /:\/\// && $(i + 1) == c) { print $i; exit } }' \
              /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n 1)
    if [ -z "$uri" ]; then
        uri=$(awk -v c="$codename" 'BEGIN { RS = "" } {
                  uri = ""; found = 0; n = split($0, line, "\n")
                  for (i = 1; i <= n; i++) {
                      if (line[i] ~ /^URIs:/) { split(line[i], u, /[ \t]+/); uri = u[2] }
                      if (line[i] ~ /^Suites:/) {
                          m = split(line[i], s, /[ \t]+/)
                          for (j = 2; j <= m; j++) if (s[j] == c) found = 1 } }
                  if (found && uri != "") { print uri; exit } }' \
                  /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# Removes a previous (possibly half-made) root; refuses if anything is mounted in it.
remove_root() {
    [ -e "$ROOT" ] || return 0
    if awk -v r="$ROOT/" 'index($2 "/", r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        die "something is mounted under $ROOT; unmount it first"
    fi
    rm -rf --one-file-system "$ROOT"
}

# OTP's executables use the root's loader and libraries; its start scripts, the root's OTP.
relocate_otp() {
    local loader=$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 file
    [ -f "$loader" ] || die "no dynamic loader at $loader"
    sed -i "s|ROOTDIR=/usr/lib/erlang\$|ROOTDIR=$ERLANG|" \
        "$BIN/erl" "$BIN/start" "$ERLANG"/erts-*/bin/erl "$ERLANG"/erts-*/bin/start
    while IFS= read -r -d '' file; do
        # Executables only: shared objects (NIFs) are loaded by beam.smp, whose rpath
        # then finds their libraries.
        if patchelf --print-interpreter "$file" >/dev/null 2>&1; then
            patchelf --set-interpreter "$loader" --force-rpath \
                --set-rpath "$ROOT/usr/lib/x86_64-linux-gnu" "$file"
        fi
    done < <(find "$ERLANG" -type f -perm -u+x -print0)
}

check_root() {
    local file missing=""
    while IFS= read -r -d '' file; do
        if patchelf --print-interpreter "$file" >/dev/null 2>&1; then
            missing+=$("$ROOT/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --list "$file" |
                           grep "not found" || true)
        fi
    done < <(find "$ERLANG" -type f -perm -u+x -print0)
    [ -z "$missing" ] || die "libraries missing in $ROOT: $missing"
    missing=$(find "$ERLANG" -xtype l)
    [ -z "$missing" ] || die "dangling links in $ROOT (a package missing?): $missing"
    "$BIN/erl" -noshell -eval '
        "27" = erlang:system_info(otp_release),
        [_ | _] = crypto:info_lib(),
        <<"{\"ok\":1}">> = iolist_to_binary(jiffy:encode(#{ok => 1})),
        {module, ct} = code:ensure_loaded(ct),
        halt().' || die "OTP 27 in $ROOT does not run"
}

cmd_root() {
    root_is_ready && return 0
    [ "$(id -u)" = 0 ] || die "making the Debian 13 root needs root (debootstrap, chroot)"
    ensure_host_packages debootstrap patchelf
    remove_root
    mkdir -p "$(dirname "$ROOT")"
    local mirror log=$REPO/_build/otp27-debootstrap.log debs=/var/cache/otp27-debs deb
    mirror=$(debian_mirror)
    echo "otp27: debootstrap --variant=minbase $SUITE from $mirror (log: $log)"
    if ! debootstrap --variant=minbase "$SUITE" "$ROOT" "$mirror" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        die "debootstrap failed"
    fi
    echo "otp27: unpacking ${PACKAGES[*]}"
    chroot "$ROOT" apt-get -q -q update
    mkdir -p "$ROOT$debs"
    chroot "$ROOT" sh -c "cd $debs && apt-get -q -q -o APT::Sandbox::User=root download ${PACKAGES[*]}"
    for deb in "$ROOT$debs"/*.deb; do
        dpkg-deb -x "$deb" "$ROOT"
    done
    for deb in "$ROOT$debs"/*.deb; do
        dpkg-deb -W --showformat='${Package} ${Version}\n' "$deb"
    done >"$ROOT/.otp27-packages"
    rm -rf "${ROOT:?}$debs" "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
    relocate_otp
    check_root
    echo "$RECIPE" >"$STAMP"
    echo "otp27: ready: $("$BIN/erl" -noshell -eval \
        'io:put_chars(erlang:system_info(system_version)), halt().' | head -n 1)"
}

# Compiles Files into Dir, behaviours before the modules that use them (erlc checks a
# module's callbacks against its behaviour's beam, which must already be on the path).
compile_ordered() {
    local dir=$1 opts=$2; shift 2
    local pending=("$@") ready rest f b names
    while [ ${#pending[@]} -gt 0 ]; do
        names=" "
        for f in "${pending[@]}"; do names+="$(basename "$f" .erl) "; done
        ready=(); rest=()
        for f in "${pending[@]}"; do
            local waits=no
            for b in $(sed -n 's/^-behaviou\?r(\([a-z_0-9]*\)).*/\1/p' "$f"); do
                [ "$b" != "$(basename "$f" .erl)" ] && [[ $names == *" $b "* ]] && waits=yes
            done
            if [ $waits = yes ]; then rest+=("$f"); else ready+=("$f"); fi
        done
        [ ${#ready[@]} -gt 0 ] || { ready=("${rest[@]}"); rest=(); } # a cycle: let erlc say it
        # shellcheck disable=SC2086 # opts is a list of erlc flags
        "$BIN/erlc" -o "$dir" -pa "$dir" "${INCLUDES[@]}" $opts "${ready[@]}"
        pending=("${rest[@]+"${rest[@]}"}")
    done
}

# What a compile reads; with the root's recipe, what the compile stamp records (so a
# removed module or a new root also recompiles).
compile_sources() { # [find tests, e.g. -newer File]
    find erlang/src erlang/include test tools -type f \
        \( -name '*.erl' -o -name '*.hrl' -o -name '*.app.src' \) "$@" | sort
}

compile_is_current() {
    [ -f "$COMPILE_STAMP" ] && [ ! "$STAMP" -nt "$COMPILE_STAMP" ] &&
        [ "$(cat "$COMPILE_STAMP")" = "$(compile_sources; echo "$RECIPE")" ] &&
        [ -z "$(compile_sources -newer "$COMPILE_STAMP")" ]
}

cmd_compile() {
    root_is_ready || die "no OTP 27 root yet: run tools/otp27.sh root (make otp27-root)"
    cd "$REPO"
    if compile_is_current; then
        echo "otp27: compiled modules are current"
        return 0
    fi
    # A new build beside the current one, which a CT run may be using.
    local build=$OUT/build.$$
    local app=$build/lib/mongoose_event_pusher
    rm -rf "$build"
    trap "rm -rf '$build'" EXIT # a failed compile leaves the current build as it was
    mkdir -p "$app/ebin" "$app/test" "$build/strict"
    touch "$build/.started" # a source edited from now on is newer than the stamp
    # As the tools profile (rebar.config): production code, the stand-in, the test
    # support and the tools in one application, every warning an error.
    compile_ordered "$app/ebin" "+debug_info +warnings_as_errors" \
        erlang/src/*.erl test/lib/*.erl test/mim/*.erl test/support/*.erl tools/*.erl
    # The production modules as `make erlang-strict` compiles them on OTP 25: specs
    # required, against the stand-in's behaviours.
    "$BIN/erlc" -o "$build/strict" -pa "$app/ebin" "${INCLUDES[@]}" \
        +warn_missing_spec +warnings_as_errors erlang/src/*.erl
    # The application resource file, and priv/ (the NIF) where code:priv_dir/1 looks.
    local modules
    modules=$(cd "$app/ebin" && ls -- *.beam | sed 's/\.beam$//' | paste -sd, -)
    sed "s/{modules, *\[\]}/{modules, [$modules]}/" erlang/src/mongoose_event_pusher.app.src \
        >"$app/ebin/mongoose_event_pusher.app"
    ln -s "$REPO/erlang/priv" "$app/priv"
    # The suites, and beside them what else test/ holds (their data directories: CT's
    # data_dir), as `rebar3 ct` lays them out in _build/test/extras/test.
    "$BIN/erlc" -o "$app/test" -pa "$app/ebin" "${INCLUDES[@]}" +debug_info +warnings_as_errors \
        test/*_SUITE.erl
    local entry
    for entry in test/*; do
        [[ $entry == *.erl ]] || ln -s "$REPO/$entry" "$app/test/"
    done
    { compile_sources; echo "$RECIPE"; } >"$build/.compiled"
    touch -r "$build/.started" "$build/.compiled"
    ln -sfn "$(basename "$build")" "$OUT/current.$$"
    mv -T "$OUT/current.$$" "$CURRENT"
    trap - EXIT
    local old
    for old in "$OUT"/build.*; do # earlier builds, unless a compile is still making one
        [ "$old" = "$build" ] || kill -0 "${old##*.}" 2>/dev/null || rm -rf "$old"
    done
    echo "otp27: compiled $(ls "$app/ebin"/*.beam | wc -l) modules and" \
         "$(ls "$app/test"/*.beam | wc -l) suites on OTP 27; erlang/src strict-clean"
}

# Runs ct:run_test/1 in a plain VM, as `rebar3 ct` does (ct_run would make the node
# distributed as ct@host, a name a concurrent run may hold), with rebar.config's ct_opts
# (hooks and all), our dir and logdir, and the selection. Exits 0 only when every case
# passed: a failed or auto-skipped case (a failed init_per_*) or a run that tested
# nothing fails.
# Arguments (plain): test dir, log dir, suites and cases (comma-separated, or "").
CT_MAIN='
[Dir, LogDir, Suites, Cases] = init:get_plain_arguments(),
{ok, Config} = file:consult("rebar.config"),
RebarOpts = proplists:get_value(ct_opts, Config, []),
%% rebar3 applies sys_config files itself before the run; ct does not know the key.
[ok = application:set_env(App, Key, Value)
 || File <- proplists:get_value(sys_config, RebarOpts, []),
    {ok, [Terms]} <- [file:consult(File)], {App, Env} <- Terms, {Key, Value} <- Env],
Names = fun(List) -> [list_to_atom(N) || N <- string:lexemes(List, ",")] end,
Selection = [{suite, Names(Suites)} || Suites =/= ""] ++ [{testcase, Names(Cases)} || Cases =/= ""],
Opts = [{dir, Dir}, {logdir, LogDir}, {auto_compile, false} | Selection]
       ++ [Opt || Opt <- RebarOpts, not lists:member(element(1, Opt), [dir, logdir, sys_config])],
Status = case ct:run_test(Opts) of
             {Passed, 0, {UserSkipped, 0}} when Passed > 0 ->
                 io:format("otp27: CT on OTP 27: ~b passed, ~b skipped~n", [Passed, UserSkipped]),
                 0;
             {Passed, Failed, {UserSkipped, AutoSkipped}}
               when is_integer(Passed), is_integer(Failed) ->
                 io:format("otp27: CT on OTP 27: ~b passed, ~b failed, ~b skipped, "
                           "~b auto-skipped~n", [Passed, Failed, UserSkipped, AutoSkipped]),
                 1;
             Other ->
                 io:format("otp27: CT on OTP 27 did not run: ~p~n", [Other]),
                 2
         end,
halt(Status).'

cmd_ct() {
    root_is_ready || die "no OTP 27 root yet: run tools/otp27.sh root (make otp27-root)"
    cd "$REPO"
    compile_is_current || die "not compiled since the last change: run tools/otp27.sh compile"
    local suites="" cases="" name
    while [ $# -gt 0 ]; do
        case "$1" in
            --suite|--case)
                [ $# -ge 2 ] || die "$1 needs a value"
                for name in ${2//,/ }; do
                    name=$(basename "$name" .erl)
                    [[ $name =~ ^[a-z][a-zA-Z0-9_]*$ ]] || die "not a name: $name"
                    if [ "$1" = --suite ]; then suites+=",$name"; else cases+=",$name"; fi
                done
                shift 2 ;;
            *) die "unknown argument: $1 (use --suite NAME[,NAME] and --case NAME[,NAME])" ;;
        esac
    done
    mkdir -p "$CT_LOGS"
    "$BIN/erl" -noshell -pa "$APP/ebin" -eval "$CT_MAIN" \
        -extra "$APP/test" "$CT_LOGS" "${suites#,}" "${cases#,}"
}

case "${1:-}" in
    root) cmd_root ;;
    compile) cmd_compile ;;
    ct) shift; cmd_ct "$@" ;;
    *) echo "usage: $0 root | compile | ct [--suite NAME[,NAME] [--case NAME[,NAME]]]" >&2; exit 2 ;;
esac
