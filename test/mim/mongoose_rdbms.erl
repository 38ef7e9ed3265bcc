%% Stand-in for MongooseIM's mongoose_rdbms, on a REAL PostgreSQL: the prepared
%% query API of MongooseIM (prepare/4, execute/3, execute_successfully/3, and
%% sql_query/2 for plain SQL) over one connection shared by every host type.
%%
%% OTP has no PostgreSQL driver, so the connection belongs to the Rust program
%% `pg_port' (native/pg_port), run as a port by this server: one request at a
%% time, `{packet, 4}' frames of JSON (see the program's doc comment). The
%% program is `PG_PORT' from the environment, or else
%% `<repo>/target/release/pg_port', built on first use in a VM (repo_binary).
%%
%% As in MongooseIM:
%% - prepare/4 only records the query under its name (`{error, already_exists}'
%%   when the name is taken, whatever the query); each `?' becomes `$1', `$2'...
%%   in order, as MongooseIM's pgsql driver does (a `?' inside a literal too);
%% - execute/3 answers `{selected, [tuple()]}', `{updated, N}' or `{error, Reason}';
%%   execute_successfully/3 answers the first two and raises
%%   `error(#{what := sql_execute_failed, reason := Result, ...})' otherwise.
%% Parameters: binaries (UTF-8 text), integers, floats, booleans and `null' (or
%% `undefined') for NULL; all are sent as text, the server converts them to the
%% column's type. Result cells, like epgsql's typed results: text, varchar and json
%% columns as binaries, integer columns as integers, booleans as `true'/`false',
%% floats as floats, bytea as binaries, NULL as `null' (other column types are an
%% error: cast them to text in the SQL). sql_query/2 uses the simple protocol:
%% every cell is a binary or `null', as epgsql's squery gives them.
%%
%% Test control (not in MongooseIM): start/1, stop/0, default_conninfo/0,
%% executable/0.
-module(mongoose_rdbms).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").

%% MongooseIM API
-export([prepare/4, execute/3, execute_successfully/3, sql_query/2]).
%% Test control (not in MongooseIM)
-export([start/1, stop/0, default_conninfo/0, executable/0, to_dollar_placeholders/1]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2, handle_info/2, terminate/2]).

-type host_type_or_global() :: binary() | global.
-type param() :: binary() | integer() | float() | boolean() | null | undefined.
-type cell() :: binary() | integer() | float() | boolean() | null.
-type query_result() :: {selected, [tuple()]} | {updated, non_neg_integer()} | {error, term()}.
-export_type([param/0, cell/0, query_result/0]).

%% {Name, Table, Fields, SQL with ? placeholders, SQL with $N placeholders}
-define(STATEMENTS, mongoose_rdbms_prepared_statements).
-define(DEFAULT_CONNINFO,
        "host=127.0.0.1 port=5432 user=postgres password=postgres dbname=test connect_timeout=5").
%% MongooseIM's default rdbms call_timeout.
-define(TIMEOUT, 60000).

%%% MongooseIM API

%% @doc Records a prepared query under Name. Raises when the server is not running
%% (MongooseIM's table exists from its start on).
-spec prepare(Name :: atom(), Table :: atom() | binary(), Fields :: [atom() | binary()],
              SQL :: iodata()) -> {ok, atom()} | {error, already_exists}.
prepare(Name, Table, Fields, SQL)
  when is_atom(Name), (is_atom(Table) orelse is_binary(Table)), is_list(Fields) ->
    true = lists:all(fun(F) -> is_atom(F) orelse is_binary(F) end, Fields),
    Query = sql_text(SQL),
    Row = {Name, to_binary(Table), [to_binary(F) || F <- Fields], Query,
           to_dollar_placeholders(Query)},
    try ets:insert_new(?STATEMENTS, Row) of
        true -> {ok, Name};
        false -> {error, already_exists}
    catch
        error:badarg -> error(#{what => mongoose_rdbms_not_started, statement_name => Name})
    end.

%% @doc Runs the prepared query Name with Params (one a placeholder, in order).
-spec execute(host_type_or_global(), atom(), [param()]) -> query_result().
execute(_HostType, Name, Params) when is_atom(Name), is_list(Params) ->
    case statement(Name) of
        {ok, SQL} ->
            case encode_params(Params, 1, []) of
                {ok, Encoded} -> request(#{op => execute, sql => SQL, params => Encoded});
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc execute/3 that answers only `{selected, Rows}' or `{updated, N}'; anything
%% else is logged and raised, as in MongooseIM.
-spec execute_successfully(host_type_or_global(), atom(), [param()]) ->
          {selected, [tuple()]} | {updated, non_neg_integer()}.
execute_successfully(HostType, Name, Params) ->
    case execute(HostType, Name, Params) of
        {selected, _} = Result -> Result;
        {updated, _} = Result -> Result;
        Other ->
            Error = #{what => sql_execute_failed, host => HostType, statement_name => Name,
                      statement_query => query_text(Name), statement_params => Params,
                      reason => Other},
            ?LOG_ERROR(Error),
            error(Error)
    end.

%% @doc Runs plain SQL (several statements allowed, no parameters) and answers the
%% result of the last statement; cells are binaries or `null'.
-spec sql_query(host_type_or_global(), iodata()) -> query_result().
sql_query(_HostType, SQL) ->
    request(#{op => query, sql => sql_text(SQL)}).

%%% Test control

%% @doc Starts the server (unlinked) with a connection to ConnInfo, a libpq-style
%% string such as default_conninfo/0. `{error, {connect_failed, Message}}' when
%% the database cannot be reached.
-spec start(iodata()) -> ok | {error, term()}.
start(ConnInfo) ->
    case executable() of
        {ok, Exe} ->
            case gen_server:start({local, ?MODULE}, ?MODULE,
                                  {Exe, unicode:characters_to_binary(ConnInfo)}, []) of
                {ok, _Pid} -> ok;
                {error, _} = Error -> Error
            end;
        {error, _} = Error ->
            Error
    end.

%% @doc Stops the server: the connection closes and prepared queries are forgotten.
-spec stop() -> ok.
stop() ->
    case whereis(?MODULE) of
        undefined -> ok;
        _Pid -> gen_server:stop(?MODULE)
    end.

%% @doc `PG_CONNINFO' from the environment, or else PostgreSQL on 127.0.0.1:5432,
%% user and password postgres, database test (the password is ignored under trust
%% authentication; `make postgres' sets it when it installs the server).
-spec default_conninfo() -> string().
default_conninfo() ->
    case os:getenv("PG_CONNINFO") of
        Value when Value =:= false; Value =:= "" -> ?DEFAULT_CONNINFO;
        Value -> Value
    end.

%% @doc The pg_port program to run, built first if needed.
-spec executable() -> {ok, file:filename()} | {error, term()}.
executable() ->
    repo_binary:executable("PG_PORT", "pg_port", "pg_port").

%% @doc Each `?' of SQL becomes `$1', `$2'... in order.
-spec to_dollar_placeholders(binary()) -> binary().
to_dollar_placeholders(SQL) ->
    [Head | Parts] = binary:split(SQL, <<"?">>, [global]),
    {Numbered, _} = lists:mapfoldl(fun(Part, N) -> {[$$, integer_to_binary(N), Part], N + 1} end,
                                   1, Parts),
    iolist_to_binary([Head | Numbered]).

%%% gen_server

-spec init({file:filename(), binary()}) -> {ok, port()} | {stop, term()}.
init({Exe, ConnInfo}) ->
    ets:new(?STATEMENTS, [named_table, public, set, {read_concurrency, true}]),
    Port = open_port({spawn_executable, Exe}, [{packet, 4}, binary, exit_status, use_stdio]),
    case port_request(Port, jiffy:encode(#{op => connect, conninfo => ConnInfo})) of
        {ok, #{<<"connected">> := true}} -> {ok, Port};
        {ok, #{<<"error">> := Message}} -> {stop, {connect_failed, Message}};
        {error, Reason} -> {stop, Reason}
    end.

-spec handle_call({request, iodata()}, gen_server:from(), port()) ->
          {reply, query_result(), port()} | {stop, term(), {error, term()}, port()}.
handle_call({request, Request}, _From, Port) ->
    case port_request(Port, Request) of
        {ok, Reply} -> {reply, decode_reply(Reply), Port};
        {error, Reason} -> {stop, Reason, {error, Reason}, Port}
    end.

-spec handle_cast(term(), port()) -> {noreply, port()}.
handle_cast(_Msg, Port) ->
    {noreply, Port}.

-spec handle_info(term(), port()) -> {noreply, port()} | {stop, term(), port()}.
handle_info({Port, {exit_status, Status}}, Port) ->
    {stop, {pg_port_exited, Status}, Port};
handle_info(_Msg, Port) ->
    {noreply, Port}.

-spec terminate(term(), port()) -> ok.
terminate(_Reason, Port) ->
    catch port_close(Port),
    ok.

%%% Internals

%% The request is encoded here, so that bad data is the caller's error.
request(Request) ->
    try jiffy:encode(Request) of
        JSON ->
            try
                gen_server:call(?MODULE, {request, JSON}, infinity)
            catch
                exit:{noproc, _} -> {error, mongoose_rdbms_not_started}
            end
    catch
        error:Reason -> {error, {bad_request, Reason}}
    end.

%% SQL as UTF-8: a binary (or iodata of them) as is, a string of characters encoded.
sql_text(SQL) ->
    case unicode:characters_to_binary(SQL) of
        Bin when is_binary(Bin) -> Bin;
        _ -> error({bad_sql, SQL})
    end.

%% One request and its answer (the program answers each request, in order).
-spec port_request(port(), iodata()) -> {ok, map()} | {error, term()}.
port_request(Port, Request) ->
    true = port_command(Port, Request),
    receive
        {Port, {data, Data}} ->
            try jiffy:decode(Data, [return_maps]) of
                Reply when is_map(Reply) -> {ok, Reply};
                Other -> {error, {bad_pg_port_reply, Other}}
            catch
                error:Reason -> {error, {bad_pg_port_reply, Reason, Data}}
            end;
        {Port, {exit_status, Status}} ->
            {error, {pg_port_exited, Status}}
    after ?TIMEOUT ->
            {error, pg_port_timeout}
    end.

decode_reply(#{<<"selected">> := Rows}) ->
    {selected, [list_to_tuple([decode_cell(Cell) || Cell <- Row]) || Row <- Rows]};
decode_reply(#{<<"updated">> := N}) ->
    {updated, N};
decode_reply(#{<<"error">> := Message}) ->
    {error, Message}.

decode_cell(#{<<"bytea">> := Hex}) -> binary:decode_hex(Hex);
decode_cell(Cell) -> Cell.

statement(Name) ->
    try ets:lookup(?STATEMENTS, Name) of
        [{Name, _Table, _Fields, _Query, SQL}] -> {ok, SQL};
        [] -> {error, {statement_not_prepared, Name}}
    catch
        error:badarg -> {error, mongoose_rdbms_not_started}
    end.

query_text(Name) ->
    try ets:lookup(?STATEMENTS, Name) of
        [{Name, _Table, _Fields, Query, _SQL}] -> Query;
        [] -> undefined
    catch
        error:badarg -> undefined
    end.

encode_params([], _N, Acc) ->
    {ok, lists:reverse(Acc)};
encode_params([Param | Rest], N, Acc) ->
    case encode_param(Param) of
        {ok, Value} -> encode_params(Rest, N + 1, [Value | Acc]);
        error -> {error, {bad_param, N, Param}}
    end.

%% Integers go as text: JSON numbers would lose the precision of big ones.
encode_param(Bin) when is_binary(Bin) ->
    case unicode:characters_to_binary(Bin) of
        Bin -> {ok, Bin};
        _ -> error
    end;
encode_param(Int) when is_integer(Int) -> {ok, integer_to_binary(Int)};
encode_param(Float) when is_float(Float) -> {ok, float_to_binary(Float, [short])};
encode_param(Bool) when is_boolean(Bool) -> {ok, Bool};
encode_param(null) -> {ok, null};
encode_param(undefined) -> {ok, null};
encode_param(_) -> error.

to_binary(Atom) when is_atom(Atom) -> atom_to_binary(Atom);
to_binary(Bin) when is_binary(Bin) -> Bin.
