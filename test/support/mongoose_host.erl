%% Entry point of the MongooseIM stand-in (not a MongooseIM module): brings up
%% the host services the event pusher relies on, loads a configuration and
%% starts the configured modules, as a MongooseIM node does at boot.
-module(mongoose_host).

-export([start/1, start_file/1, start_toml/2, write_toml/2, stop/0]).

%% Services are started unlinked: tests call start/1 from short-lived processes
%% (e.g. init_per_suite), and the services must outlive them. ejabberd_sup first, as
%% MongooseIM's root supervisor: modules start their processes under it.
-define(SERVICES, [ejabberd_sup, gen_hook, mongoose_instrument, ejabberd_sm, ejabberd_local,
                   gen_iq_handler, ejabberd_auth]).

%% @doc Starts the services that are not running yet, replaces the
%% configuration with Opts, then starts the outgoing pools and after them the
%% configured modules, in MongooseIM's boot order. As MongooseIM's boot, it fails as
%% a whole: when a pool or a module cannot start, whatever was started is stopped
%% again, the configuration is erased and the error is raised (a real node halts).
-spec start([{mongoose_config:key(), mongoose_config:value()}] |
            #{mongoose_config:key() => mongoose_config:value()}) -> ok.
start(Opts) ->
    lists:foreach(fun ensure_service/1, ?SERVICES),
    mongoose_config:set_opts(Opts),
    try
        mongoose_wpool:start_configured_pools(),
        mongoose_modules:start()
    catch
        Class:Reason:Stacktrace ->
            stop(),
            erlang:raise(Class, Reason, Stacktrace)
    end.

%% @doc start/1 with the options read from a mongooseim.toml file.
-spec start_file(file:name_all()) -> ok.
start_file(TomlPath) ->
    start(mongoose_config_parser:parse_file(TomlPath)).

%% @doc start_file/1 of TOML text, written to a fresh file in Dir (tests build their
%% configuration as text; the parser, like MongooseIM's, reads files).
-spec start_toml(file:name_all(), iodata()) -> ok.
start_toml(Dir, Toml) ->
    start_file(write_toml(Dir, Toml)).

%% @doc Writes TOML text to a fresh file in Dir and returns its path.
-spec write_toml(file:name_all(), iodata()) -> file:filename().
write_toml(Dir, Toml) ->
    Path = filename:join(Dir, "mongooseim_" ++ integer_to_list(erlang:unique_integer([positive]))
                         ++ ".toml"),
    ok = file:write_file(Path, Toml),
    Path.

%% @doc Stops the modules and the services and erases the configuration.
-spec stop() -> ok.
stop() ->
    mongoose_modules:stop(),
    mongoose_wpool:stop_configured_pools(),
    lists:foreach(fun stop_service/1, lists:reverse(?SERVICES)),
    mongoose_config:erase_opts().

-spec ensure_service(module()) -> ok.
ensure_service(Service) ->
    case whereis(Service) of
        undefined -> {ok, _} = Service:start(), ok;
        _Pid -> ok
    end.

-spec stop_service(module()) -> ok.
stop_service(Service) ->
    case whereis(Service) of
        undefined -> ok;
        _Pid -> Service:stop()
    end.
