%% Stand-in for MongooseIM's ejabberd_auth: whether a user account exists.
%%
%% There are no auth backends: tests register the users that exist with
%% register_user/1 (not in MongooseIM), kept by bare JID in an ETS table owned
%% by this server, for every host type alike. Anonymous users are not
%% emulated, so `with_anonymous' answers like `stored'. set_failure/1 (not in
%% MongooseIM) makes lookups raise, as a failing backend would.
-module(ejabberd_auth).
-behaviour(gen_server).

-include("jid.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([does_user_exist/3]).
%% Test control (not in MongooseIM)
-export([register_user/1, unregister_user/1, set_failure/1, reset/0]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2]).

%% {{LUser, LServer}} rows, plus {failure, Reason} when set.
-define(TABLE, ejabberd_auth_users).

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; all users are forgotten.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

%% @doc True iff the user of the (bare or full) JID is registered.
-spec does_user_exist(binary(), jid:jid(), stored | with_anonymous) -> boolean().
does_user_exist(HostType, #jid{} = Jid, Type)
  when is_binary(HostType), (Type =:= stored orelse Type =:= with_anonymous) ->
    case ets:lookup(?TABLE, failure) of
        [{failure, Reason}] -> error(Reason);
        [] -> ets:member(?TABLE, jid:to_lus(Jid))
    end.

%%% Test control

%% @doc Registers the user of the (bare or full) JID.
-spec register_user(jid:jid()) -> ok.
register_user(#jid{} = Jid) ->
    gen_server:call(?MODULE, {insert, {jid:to_lus(Jid)}}).

-spec unregister_user(jid:jid()) -> ok.
unregister_user(#jid{} = Jid) ->
    gen_server:call(?MODULE, {delete, jid:to_lus(Jid)}).

%% @doc From now on does_user_exist/3 raises `error(Reason)'; `none' ends that.
-spec set_failure(term()) -> ok.
set_failure(none) ->
    gen_server:call(?MODULE, {delete, failure});
set_failure(Reason) ->
    gen_server:call(?MODULE, {insert, {failure, Reason}}).

%% @doc Unregisters all users and ends a failure.
-spec reset() -> ok.
reset() ->
    gen_server:call(?MODULE, reset).

%%% gen_server

-spec init([]) -> {ok, no_state}.
init([]) ->
    ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    {ok, no_state}.

-spec handle_call({insert, tuple()} | {delete, term()} | reset, gen_server:from(), no_state) ->
          {reply, ok, no_state}.
handle_call({insert, Row}, _From, State) ->
    true = ets:insert(?TABLE, Row),
    {reply, ok, State};
handle_call({delete, Key}, _From, State) ->
    true = ets:delete(?TABLE, Key),
    {reply, ok, State};
handle_call(reset, _From, State) ->
    true = ets:delete_all_objects(?TABLE),
    {reply, ok, State}.

-spec handle_cast(term(), no_state) -> {noreply, no_state}.
handle_cast(_Msg, State) ->
    {noreply, State}.
