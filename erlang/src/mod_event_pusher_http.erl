%% @doc The http backend: for each configured handler whose callback module wants a
%% request, the callback builds headers and body here (Erlang), and the request is
%% queued for the Rust side, which POSTs it with keep-alive, retries and a bounded
%% queue. One Rust instance per (host type, pool), so pools with different servers,
%% timeouts or TLS settings never share a queue.
-module(mod_event_pusher_http).
-behaviour(gen_mod).
-behaviour(mod_event_pusher).
-behaviour(mod_event_pusher_instance).

-export([start/2, stop/1, config_spec/0, instrumentation/1, supported_features/0]).
-export([push_event/2, handle_report/3, stats/1, fix_path/1]).

-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include("mongoose_config_spec.hrl").
-include_lib("kernel/include/logger.hrl").

-type handler_opts() :: #{pool_name := atom(), path := binary(), callback_module := module()}.
-export_type([handler_opts/0]).

-callback should_make_req(Acc :: mongoose_acc:t(), Dir :: in | out, Packet :: exml:element(),
                          From :: jid:jid(), To :: jid:jid(), Opts :: handler_opts()) -> boolean().
-callback prepare_headers(Acc :: mongoose_acc:t(), Dir :: in | out, Host :: binary(),
                          Message :: binary(), Sender :: binary(), Receiver :: binary(),
                          Opts :: handler_opts()) -> [{binary(), binary()}].
-callback prepare_body(Acc :: mongoose_acc:t(), Dir :: in | out, Host :: binary(),
                       Message :: binary(), Sender :: binary(), Receiver :: binary(),
                       Opts :: handler_opts()) -> binary().

%% gen_mod

-spec start(binary(), gen_mod:module_opts()) -> ok.
start(HostType, Opts0) ->
    Opts = #{handlers := Handlers} = mod_event_pusher_config:with_defaults(config_spec(), Opts0),
    Pools = lists:usort([Pool || #{pool_name := Pool} <- Handlers]),
    Instances = start_pools(HostType, Opts, Pools, #{}),
    persistent_term:put(handlers_key(HostType),
                        [{Handler, maps:get(Pool, Instances)}
                         || Handler = #{pool_name := Pool} <- Handlers]).

-spec stop(binary()) -> ok.
stop(HostType) ->
    Handlers = persistent_term:get(handlers_key(HostType), []),
    persistent_term:erase(handlers_key(HostType)),
    #{drain_timeout_ms := Drain} = mod_event_pusher_config:module_opts(HostType, ?MODULE),
    Pools = lists:usort([Pool || {#{pool_name := Pool}, _} <- Handlers]),
    mod_event_pusher_instance:stop_all(HostType, [{http, Pool} || Pool <- Pools], Drain),
    ok.

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

-spec config_spec() -> #section{}.
config_spec() ->
    #section{items = maps:merge(#{<<"handlers">> => #list{items = handler_spec(),
                                                          validate = unique}},
                                mod_event_pusher_delivery:config_items()),
             defaults = maps:merge(#{<<"handlers">> => []},
                                   mod_event_pusher_delivery:config_defaults())}.

handler_spec() ->
    #section{items = #{<<"pool_name">> => #option{type = atom, validate = pool_name},
                       <<"path">> => #option{type = binary, process = fun ?MODULE:fix_path/1},
                       <<"callback_module">> => #option{type = atom, validate = module}},
             defaults = #{<<"pool_name">> => http_pool,
                          <<"path">> => <<>>,
                          <<"callback_module">> => mod_event_pusher_http_defaults}}.

%% @doc Handler paths are relative to the pool's path_prefix: one leading "/" goes.
-spec fix_path(binary()) -> binary().
fix_path(<<"/", Path/binary>>) -> Path;
fix_path(Path) -> Path.

-spec instrumentation(binary()) -> [mongoose_instrument:spec()].
instrumentation(HostType) ->
    [{mod_event_pusher_http_sent, #{host_type => HostType},
      #{metrics => #{count => spiral, response_time => histogram, failure_count => spiral}}},
     {mod_event_pusher_http_delivery, #{host_type => HostType},
      #{metrics => #{delivered => spiral, retried => spiral, failed => spiral,
                     dropped => spiral}}}].

%% @doc Queue and delivery counters of each pool's instance.
-spec stats(binary()) -> #{atom() => mod_event_pusher_nif:stats()}.
stats(HostType) ->
    maps:from_list([{Pool, mod_event_pusher_nif:stats(Instance)}
                    || {#{pool_name := Pool}, Instance}
                           <- persistent_term:get(handlers_key(HostType), [])]).

%% mod_event_pusher: the hook path

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, #chat_event{direction = Dir, from = From, to = To, packet = Packet}) ->
    Handlers = persistent_term:get(handlers_key(mongoose_acc:host_type(Acc)), []),
    [push_to_handler(Acc, Dir, Packet, From, To, Handler) || Handler <- Handlers],
    Acc;
push_event(Acc, _Event) ->
    Acc.

push_to_handler(Acc, Dir, Packet, From, To,
                {Opts = #{callback_module := Module, path := Path}, Instance}) ->
    try Module:should_make_req(Acc, Dir, Packet, From, To, Opts) of
        true ->
            #jid{luser = Sender, lserver = Host} = From,
            #jid{luser = Receiver} = To,
            Message = exml_query:path(Packet, [{element, <<"body">>}, cdata], <<>>),
            Headers = Module:prepare_headers(Acc, Dir, Host, Message, Sender, Receiver, Opts),
            Body = body(Module, Acc, Dir, Host, Message, Sender, Receiver, Opts),
            enqueue(Instance, #http_event{path = Path, headers = Headers, body = Body,
                                          tag = Sender}, Opts);
        false ->
            ok
    catch Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => event_pusher_http_callback_failed, callback_module => Module,
                         class => Class, reason => Reason, stacktrace => Stacktrace})
    end.

%% The default callback module's body goes as its form fields: the delivery worker
%% encodes them (as MongooseIM's cow_qs:qs/1 does), so the routing process does no
%% work that grows with the message. Any other module's prepare_body/7 runs here.
body(mod_event_pusher_http_defaults, _Acc, _Dir, Host, Message, Sender, Receiver, _Opts) ->
    {form, mod_event_pusher_http_defaults:form_fields(Host, Message, Sender, Receiver)};
body(Module, Acc, Dir, Host, Message, Sender, Receiver, Opts) ->
    Module:prepare_body(Acc, Dir, Host, Message, Sender, Receiver, Opts).

%% Full queue, too large an event or stopped instance: counted by the instance,
%% reported as metrics and logged by the reporter.
enqueue(Instance, Request, Opts) ->
    case mod_event_pusher_nif:push(Instance, Request) of
        ok -> ok;
        {error, queue_full} -> ok;
        {error, too_large} -> ok;
        {error, stopped} -> ok;
        {error, {bad_event, Field}} ->
            ?LOG_ERROR(#{what => event_pusher_http_bad_request, handler => Opts, field => Field,
                         text => <<"The callback module returned headers or a body that are "
                                   "not binaries">>})
    end.

handlers_key(HostType) ->
    {?MODULE, handlers, HostType}.

%% Starting the Rust instances

start_pools(_HostType, _Opts, [], Started) ->
    Started;
start_pools(HostType, Opts, [Pool | Pools], Started) ->
    case start_pool(HostType, Opts, Pool) of
        {ok, Instance} ->
            start_pools(HostType, Opts, Pools, Started#{Pool => Instance});
        {error, Reason} ->
            mod_event_pusher_instance:stop_all(HostType, [{http, P} || P <- maps:keys(Started)], 0),
            error(#{what => event_pusher_http_start_failed, host_type => HostType,
                    pool_name => Pool, reason => Reason})
    end.

start_pool(HostType, Opts, Pool) ->
    case mod_event_pusher_delivery:find_pool(HostType, http, Pool) of
        {ok, PoolConfig} ->
            case check_pool_host(PoolConfig) of
                ok -> start_instance(HostType, Opts, Pool, PoolConfig);
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

start_instance(HostType, Opts, Pool, PoolConfig) ->
    Instance = mod_event_pusher_delivery:instance_config(
                 Opts, mod_event_pusher_delivery:pool_workers(PoolConfig)),
    Config = connection_config(PoolConfig),
    mod_event_pusher_instance:start(
      HostType, {http, Pool}, ?MODULE,
      fun(Reporter) -> mod_event_pusher_nif:start_http(Instance, Config, Reporter) end).

%% MongooseIM's pool spec only wants a non-empty string: the URL is checked here, at
%% start, naming the option (the value is left out: it may hold credentials).
check_pool_host(#{tag := Tag, conn_opts := Conn}) ->
    case mod_event_pusher_config:check_url(maps:get(host, Conn, ""), none) of
        ok ->
            ok;
        {error, Cause} ->
            {error, #{what => invalid_url, cause => Cause,
                      option => iolist_to_binary(["outgoing_pools.http.", atom_to_binary(Tag),
                                                  ".connection.host"])}}
    end.

connection_config(#{tag := Tag, conn_opts := Conn}) ->
    Tls = maps:get(tls, Conn, #{}),
    warn_unsupported_tls(Tag, Tls),
    Sni = maps:get(server_name_indication, Tls, #{}),
    #http_config{host = unicode:characters_to_binary(maps:get(host, Conn)),
                 path_prefix = maps:get(path_prefix, Conn, <<"/">>),
                 request_timeout_ms = maps:get(request_timeout, Conn, 2000),
                 verify_mode = verify_mode(Tag, Tls),
                 cacertfile = path(maps:get(cacertfile, Tls, "")),
                 certfile = path(maps:get(certfile, Tls, "")),
                 keyfile = path(maps:get(keyfile, Tls, "")),
                 server_name_indication = maps:get(enabled, Sni, true)}.

path(Path) -> unicode:characters_to_binary(Path).

%% MongooseIM's meanings: peer verifies the chain; selfsigned_peer also accepts a
%% self-signed certificate (its name and dates are still checked); none checks nothing.
verify_mode(Tag, Tls) ->
    case maps:get(verify_mode, Tls, peer) of
        none ->
            ?LOG_WARNING(#{what => event_pusher_http_tls_not_verified, pool_name => Tag,
                           text => <<"tls.verify_mode = \"none\": the server's certificate "
                                     "is not checked; anyone on the path can read and forge "
                                     "the events">>}),
            none;
        Mode when Mode =:= peer; Mode =:= selfsigned_peer ->
            Mode
    end.

%% rustls picks ciphers and versions itself and reads unencrypted PEM keys only.
warn_unsupported_tls(Tag, Tls) ->
    case [Key || Key <- [ciphers, versions, password, crl_files],
                 not lists:member(maps:get(Key, Tls, []), [[], ""])] of
        [] -> ok;
        Ignored -> ?LOG_WARNING(#{what => event_pusher_http_tls_options_ignored, pool_name => Tag,
                                  options => Ignored})
    end.

%% Reports from the Rust instance, in the reporter process

-spec handle_report(binary(), {http, atom()}, mod_event_pusher_instance:report()) -> ok.
handle_report(HostType, {http, _Pool} = Key, Report) ->
    Labels = #{host_type => HostType},
    mod_event_pusher_delivery:report(
      HostType, Key, Report,
      #{delivery_event => mod_event_pusher_http_delivery,
        attempt => fun(Attempt) -> report_attempt(Labels, Attempt) end}).

report_attempt(Labels, {Sender, Code, TimeUs, _Bytes}) when is_integer(Code) ->
    mongoose_instrument:execute(mod_event_pusher_http_sent, Labels,
                                #{count => 1, response_time => TimeUs,
                                  response_code => integer_to_binary(Code), sender => Sender});
report_attempt(Labels, {Sender, {error, _Reason}, _TimeUs, _Bytes}) ->
    mongoose_instrument:execute(mod_event_pusher_http_sent, Labels,
                                #{failure_count => 1, sender => Sender}).
