%% Stand-in for MongooseIM's ejabberd_sm: the registry of c2s sessions and of
%% the info map each session carries (e.g. `publish_service' of XEP-0357).
%%
%% There are no c2s processes here: tests open sessions with open_session/3
%% (not in MongooseIM) and the session rows live in an ETS table owned by this
%% server. route/4 delivers as MongooseIM's does: a stanza for a session goes to its
%% process as `{route, Acc}' (what mongoose_c2s:route/2 sends), IQ requests to a
%% bare JID go to the ejabberd_sm IQ handlers, messages to an offline user run the
%% offline hooks, and what cannot be delivered is bounced with MongooseIM's errors. store_info/4, asynchronous in MongooseIM (the c2s process updates
%% its own session), is applied synchronously before it returns ok. Reads go
%% to the table directly; writes are serialized by the server.
-module(ejabberd_sm).
-behaviour(gen_server).

-include("jlib.hrl").
-include("session.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([route/4, store_info/4, get_info/2, remove_info/3, get_raw_sessions/1, is_offline/1]).
%% Test control (not in MongooseIM)
-export([open_session/3, close_session/1, set_priority/2, reset/0]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2]).

-export_type([sid/0, session/0, info_key/0]).

-type sid() :: {integer(), pid()}.
-type session() :: #session{}.
-type info_key() :: atom().
-type priority() :: integer() | undefined.

%% Rows: {Sid, HostType, #session{}}.
-define(TABLE, ejabberd_sm_sessions).

-record(state, {last_time = 0 :: integer()}).

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; all sessions are dropped with its table.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

%% @doc Delivers a stanza routed to a local user (called by ejabberd_local).
-spec route(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
route(From, #jid{lresource = <<>>} = To, Acc, #xmlel{name = <<"message">>} = El) ->
    route_message(From, To, Acc, El);
route(From, #jid{lresource = <<>>} = To, Acc, #xmlel{name = <<"iq">>} = El) ->
    process_iq(From, To, Acc, El);
route(_From, #jid{lresource = <<>>}, Acc, _El) ->
    Acc;
route(From, To, Acc, #xmlel{name = Name} = El) ->
    case [Pid || #session{sid = {_, Pid}} <- sessions_of_usr(jid:to_lower(To))] of
        [_ | _] = Pids ->
            lists:last(Pids) ! {route, Acc},
            Acc;
        [] when Name =:= <<"message">> ->
            route_message(From, To, Acc, El);
        [] when Name =:= <<"iq">> ->
            case exml_query:attr(El, <<"type">>) of
                Reply when Reply =:= <<"result">>; Reply =:= <<"error">> -> Acc;
                _ -> bounce(From, To, Acc, El, mongoose_xmpp_errors:service_unavailable())
            end;
        [] ->
            Acc
    end.

%% @doc Sets Key in the info map of the session Sid (Value `undefined'
%% removes Key). Sid must be `{_, Pid}'; an unknown session is ignored, as a
%% message to a finished c2s process would be.
-spec store_info(jid:jid(), sid(), info_key(), term()) -> ok.
store_info(#jid{}, {_, Pid} = Sid, Key, Value) when is_pid(Pid) ->
    gen_server:call(?MODULE, {store_info, Sid, Key, Value}).

%% @doc Key from the info of the session of exactly this full JID (the newest
%% one if several).
-spec get_info(jid:jid(), info_key()) -> {ok, term()} | {error, offline | not_set}.
get_info(#jid{} = Jid, Key) ->
    case sessions_of_usr(jid:to_lower(Jid)) of
        [] ->
            {error, offline};
        Sessions ->
            #session{info = Info} = lists:last(Sessions),
            case maps:find(Key, Info) of
                {ok, Value} -> {ok, Value};
                error -> {error, not_set}
            end
    end.

%% @doc store_info/4 with Value `undefined'.
-spec remove_info(jid:jid(), sid(), info_key()) -> ok.
remove_info(Jid, Sid, Key) ->
    store_info(Jid, Sid, Key, undefined).

%% @doc The sessions of the bare JID's user, one per resource (the newest one
%% of a resource), oldest first.
-spec get_raw_sessions(jid:jid()) -> [session()].
get_raw_sessions(#jid{luser = LUser, lserver = LServer}) ->
    Sessions = sessions_of_us({LUser, LServer}),
    Newest = maps:from_list([{Usr, S} || #session{usr = Usr} = S <- Sessions]),
    lists:keysort(#session.sid, maps:values(Newest)).

%% @doc True iff no session of the user (any resource) is available, i.e.
%% has an integer priority >= 0.
-spec is_offline(jid:jid()) -> boolean().
is_offline(#jid{luser = LUser, lserver = LServer}) ->
    not lists:any(fun(#session{priority = P}) -> is_integer(P) andalso P >= 0 end,
                  sessions_of_us({LUser, LServer})).

%%% Test control

%% @doc Opens a session for a full JID in the calling process (the sid's pid is
%% self()); returns its sid. Sids are unique and increase with each call.
-spec open_session(binary(), jid:jid(), priority()) -> sid().
open_session(HostType, #jid{} = FullJid, Priority)
  when is_binary(HostType), is_integer(Priority) orelse Priority =:= undefined ->
    gen_server:call(?MODULE, {open_session, HostType, jid:to_lower(FullJid), Priority, self()}).

%% @doc Closes every session of this full JID.
-spec close_session(jid:jid()) -> ok.
close_session(#jid{} = FullJid) ->
    gen_server:call(?MODULE, {close_session, jid:to_lower(FullJid)}).

%% @doc Sets the priority of every session of this full JID (`undefined' =
%% the session is not available, as before its first presence).
-spec set_priority(jid:jid(), priority()) -> ok.
set_priority(#jid{} = FullJid, Priority) when is_integer(Priority); Priority =:= undefined ->
    gen_server:call(?MODULE, {set_priority, jid:to_lower(FullJid), Priority}).

%% @doc Closes all sessions.
-spec reset() -> ok.
reset() ->
    gen_server:call(?MODULE, reset).

%%% gen_server

-spec init([]) -> {ok, #state{}}.
init([]) ->
    ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    {ok, #state{}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({open_session, HostType, {LUser, LServer, _} = Usr, Priority, Pid}, _From,
            #state{last_time = Last} = State) ->
    Time = max(erlang:system_time(microsecond), Last + 1),
    Sid = {Time, Pid},
    Session = #session{sid = Sid, usr = Usr, us = {LUser, LServer}, priority = Priority},
    true = ets:insert(?TABLE, {Sid, HostType, Session}),
    {reply, Sid, State#state{last_time = Time}};
handle_call({close_session, Usr}, _From, State) ->
    [ets:delete(?TABLE, Sid) || #session{sid = Sid} <- sessions_of_usr(Usr)],
    {reply, ok, State};
handle_call({set_priority, Usr, Priority}, _From, State) ->
    [update_session(Sid, fun(S) -> S#session{priority = Priority} end)
     || #session{sid = Sid} <- sessions_of_usr(Usr)],
    {reply, ok, State};
handle_call({store_info, Sid, Key, Value}, _From, State) ->
    update_session(Sid, fun(#session{info = Info} = S) ->
                                S#session{info = set_info(Key, Value, Info)}
                        end),
    {reply, ok, State};
handle_call(reset, _From, State) ->
    true = ets:delete_all_objects(?TABLE),
    {reply, ok, State}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%%% Internals

%% IQ handlers are registered for a host type; MongooseIM serves them for each domain
%% of that host type (for a static domain the two are the same).
-spec handlers_domain(jid:jid()) -> binary().
handlers_domain(#jid{lserver = LServer}) ->
    case mongoose_domain_api:get_host_type(LServer) of
        {ok, HostType} -> HostType;
        {error, not_found} -> LServer
    end.

%% To the available sessions of the highest priority; without one, by type: errors
%% dropped, groupchat to `offline_groupchat_message', headline bounced, the rest to
%% `offline_message' when the user exists (else bounced).
-spec route_message(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
route_message(From, To, Acc, El) ->
    Available = [{P, Pid} || #session{priority = P, sid = {_, Pid}}
                                 <- sessions_of_us({To#jid.luser, To#jid.lserver}),
                             is_integer(P), P >= 0],
    case Available of
        [_ | _] ->
            Max = lists:max([P || {P, _} <- Available]),
            [Pid ! {route, Acc} || {P, Pid} <- Available, P =:= Max],
            Acc;
        [] ->
            HostType = mongoose_acc:host_type(Acc),
            case exml_query:attr(El, <<"type">>, <<"normal">>) of
                <<"error">> ->
                    Acc;
                <<"groupchat">> ->
                    run_offline_hook(offline_groupchat_message, HostType, Acc, From, To, El);
                <<"headline">> ->
                    bounce(From, To, Acc, El, mongoose_xmpp_errors:service_unavailable());
                _ ->
                    case ejabberd_auth:does_user_exist(HostType, To, stored) of
                        true -> run_offline_hook(offline_message, HostType, Acc, From, To, El);
                        false -> bounce(From, To, Acc, El,
                                        mongoose_xmpp_errors:service_unavailable())
                    end
            end
    end.

-spec run_offline_hook(atom(), binary(), mongoose_acc:t(), jid:jid(), jid:jid(),
                       exml:element()) -> mongoose_acc:t().
run_offline_hook(Hook, HostType, Acc, From, To, El) ->
    {_, NewAcc} = gen_hook:run_fold(Hook, HostType, Acc, #{from => From, to => To, packet => El}),
    NewAcc.

%% IQ requests to the user's bare JID go to the handler of their namespace.
-spec process_iq(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
process_iq(From, To, Acc, El) ->
    case gen_iq_handler:process_iq(ejabberd_sm, handlers_domain(To), Acc, From, To, El) of
        {error, no_handler} -> bounce(From, To, Acc, El, mongoose_xmpp_errors:service_unavailable());
        not_a_request -> Acc;
        ignore -> Acc;
        Reply -> ejabberd_router:route(To, From, Acc, Reply)
    end.

-spec bounce(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element(), exml:element()) ->
          mongoose_acc:t().
bounce(From, To, Acc, El, Error) ->
    ejabberd_router:route(To, From, Acc, jlib:make_error_reply(El, Error)).

-spec set_info(info_key(), term(), map()) -> map().
set_info(Key, undefined, Info) ->
    maps:remove(Key, Info);
set_info(Key, Value, Info) ->
    Info#{Key => Value}.

-spec update_session(sid(), fun((session()) -> session())) -> ok.
update_session(Sid, Update) ->
    case ets:lookup(?TABLE, Sid) of
        [{Sid, HostType, Session}] ->
            true = ets:insert(?TABLE, {Sid, HostType, Update(Session)}),
            ok;
        [] ->
            ok
    end.

%% Sorted by sid, so the newest session is the last one.
-spec sessions_of_usr(jid:ljid()) -> [session()].
sessions_of_usr(Usr) ->
    lists:keysort(#session.sid, ets:select(?TABLE, [{{'_', '_', '$1'},
                                                     [{'=:=', {element, #session.usr, '$1'},
                                                       {const, Usr}}],
                                                     ['$1']}])).

-spec sessions_of_us(jid:simple_bare_jid()) -> [session()].
sessions_of_us(Us) ->
    lists:keysort(#session.sid, ets:select(?TABLE, [{{'_', '_', '$1'},
                                                     [{'=:=', {element, #session.us, '$1'},
                                                       {const, Us}}],
                                                     ['$1']}])).
