%% Stand-in for MongooseIM's ejabberd_local: delivery of stanzas routed to a local
%% domain (ejabberd_router calls route/4 after `filter_local_packet'), and IQs sent
%% by the server itself (route_iq/5,6) whose replies go to a callback.
%%
%% As in MongooseIM: a stanza to a user goes to ejabberd_sm; an IQ request to the
%% domain goes to the ejabberd_local IQ handler of its namespace (none:
%% feature-not-implemented); an IQ result or error to the domain is the reply to a
%% route_iq request with that id (found by id alone) and goes to its callback; other
%% stanzas to the domain are dropped; a stanza to a resource of the domain is
%% bounced with item-not-found.
%%
%% The server owns three tables: the pending IQ callbacks (with their timeout
%% timers), the fake services (components serving a domain) that ejabberd_router
%% delivers to, and the log of every stanza routed (a public table, written by the
%% routing process). Test control (not in MongooseIM): set_iq_timeout/1,
%% register_service/2, unregister_service/1, routed/0, reset/0.
-module(ejabberd_local).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").
-include("jlib.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([route_iq/5, route_iq/6]).
%% Test control (not in MongooseIM)
-export([set_iq_timeout/1, register_service/2, unregister_service/1, routed/0, reset/0]).
%% Stand-in internals, used by ejabberd_router (not MongooseIM's API: there,
%% local delivery goes through routing modules)
-export([route/4, lookup_service/1, record_routed/3]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-export_type([iq_callback/0, service_fun/0]).

-type iq_reply() :: #iq{type :: result | error, sub_el :: [exml:element()]}.
-type iq_callback() :: fun((jid:jid() | undefined, jid:jid() | undefined,
                            mongoose_acc:t() | undefined, iq_reply() | timeout) -> any()).
%% A fake component: gets each stanza routed to its domain (with `from' and `to'
%% attributes set) and may answer with an IQ result or error element.
-type service_fun() :: fun((exml:element()) -> {reply, exml:element()} | noreply).

-define(DEFAULT_IQ_TIMEOUT_MS, 32000).
%% {Id, Callback, TimerRef}
-define(CALLBACKS, ejabberd_local_iq_callbacks).
%% {Domain, ServiceFun}
-define(SERVICES, ejabberd_local_services).
%% {Seq, From, To, El}
-define(ROUTED, ejabberd_local_routed).

-record(state, {iq_timeout = ?DEFAULT_IQ_TIMEOUT_MS :: pos_integer()}).

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; pending callbacks are dropped without being called.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

%% @doc route_iq/6 with the IQ timeout (32000 ms unless set_iq_timeout/1 changed it).
-spec route_iq(jid:jid(), jid:jid(), mongoose_acc:t(), jlib:iq(), iq_callback()) ->
          mongoose_acc:t().
route_iq(From, To, Acc, IQ, Callback) ->
    route_iq(From, To, Acc, IQ, Callback, default).

%% @doc Sends an IQ request from From to To with a generated id. The reply
%% routed back to From calls `Callback(ReplyFrom, ReplyTo, ReplyAcc,
%% #iq{type = result | error, sub_el = Children})' in the routing process;
%% without a reply in time, `Callback(undefined, undefined, undefined, timeout)'
%% runs in a new process. The callback is called at most once.
-spec route_iq(jid:jid(), jid:jid(), mongoose_acc:t(), jlib:iq(), iq_callback(),
               pos_integer() | default) -> mongoose_acc:t().
route_iq(From, To, Acc, #iq{type = Type} = IQ, Callback, Timeout)
  when (Type =:= set orelse Type =:= get), is_function(Callback, 4) ->
    Id = make_iq_id(),
    ok = gen_server:call(?MODULE, {register_iq_callback, Id, Callback, Timeout}),
    ejabberd_router:route(From, To, Acc, jlib:iq_to_xml(IQ#iq{id = Id})).

%%% Test control

%% @doc The timeout of route_iq/5 from now on (until reset/0).
-spec set_iq_timeout(pos_integer()) -> ok.
set_iq_timeout(Ms) when is_integer(Ms), Ms > 0 ->
    gen_server:call(?MODULE, {set_iq_timeout, Ms}).

%% @doc Makes Fun answer the stanzas routed to this domain, as a component serving
%% it would (e.g. a pubsub service). Replaces an earlier service of that domain.
-spec register_service(binary(), service_fun()) -> ok.
register_service(Domain, Fun) when is_function(Fun, 1) ->
    gen_server:call(?MODULE, {register_service, service_domain(Domain), Fun}).

-spec unregister_service(binary()) -> ok.
unregister_service(Domain) ->
    gen_server:call(?MODULE, {unregister_service, service_domain(Domain)}).

%% @doc Every stanza passed to ejabberd_router:route/4 so far, oldest first,
%% as given to it.
-spec routed() -> [{jid:jid(), jid:jid(), exml:element()}].
routed() ->
    [{From, To, El} || {_Seq, From, To, El} <- ets:tab2list(?ROUTED)].

%% @doc Forgets the pending callbacks (they are never called), the services
%% and the routed stanzas, and restores the default IQ timeout.
-spec reset() -> ok.
reset() ->
    gen_server:call(?MODULE, reset).

%%% Stand-in internals

%% @doc Delivery of a stanza routed to a local domain (see the module doc).
-spec route(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
route(From, #jid{luser = <<>>, lresource = <<>>} = To, Acc, #xmlel{name = <<"iq">>} = El) ->
    process_iq(From, To, Acc, El);
route(_From, #jid{luser = <<>>, lresource = <<>>}, Acc, _El) ->
    Acc;
route(From, #jid{luser = <<>>} = To, Acc, El) ->
    case exml_query:attr(El, <<"type">>) of
        Type when Type =:= <<"error">>; Type =:= <<"result">> ->
            Acc;
        _ ->
            Error = jlib:make_error_reply(El, mongoose_xmpp_errors:item_not_found()),
            ejabberd_router:route(To, From, Acc, Error)
    end;
route(From, To, Acc, El) ->
    ejabberd_sm:route(From, To, Acc, El).

%% @doc The service serving the JID's domain.
-spec lookup_service(jid:jid()) -> {ok, service_fun()} | error.
lookup_service(#jid{lserver = LServer}) ->
    case ets:lookup(?SERVICES, LServer) of
        [{_, Fun}] -> {ok, Fun};
        [] -> error
    end.

-spec record_routed(jid:jid(), jid:jid(), exml:element()) -> ok.
record_routed(From, To, El) ->
    true = ets:insert(?ROUTED, {erlang:unique_integer([monotonic]), From, To, El}),
    ok.

%%% gen_server

-spec init([]) -> {ok, #state{}}.
init([]) ->
    ets:new(?CALLBACKS, [named_table, protected, set]),
    ets:new(?SERVICES, [named_table, protected, set, {read_concurrency, true}]),
    ets:new(?ROUTED, [named_table, public, ordered_set]),
    {ok, #state{}}.

-spec handle_call(term(), gen_server:from(), #state{}) -> {reply, term(), #state{}}.
handle_call({register_iq_callback, Id, Callback, Timeout}, _From,
            #state{iq_timeout = DefaultTimeout} = State) ->
    Ms = case Timeout of
             default -> DefaultTimeout;
             _ -> Timeout
         end,
    TRef = erlang:send_after(Ms, self(), {iq_timeout, Id}),
    true = ets:insert(?CALLBACKS, {Id, Callback, TRef}),
    {reply, ok, State};
handle_call({take_iq_callback, Id}, _From, State) ->
    Reply = case ets:lookup(?CALLBACKS, Id) of
                [{Id, Callback, TRef}] ->
                    _ = erlang:cancel_timer(TRef),
                    true = ets:delete(?CALLBACKS, Id),
                    {ok, Callback};
                _ ->
                    error
            end,
    {reply, Reply, State};
handle_call({set_iq_timeout, Ms}, _From, State) ->
    {reply, ok, State#state{iq_timeout = Ms}};
handle_call({register_service, JidBinary, Fun}, _From, State) ->
    true = ets:insert(?SERVICES, {JidBinary, Fun}),
    {reply, ok, State};
handle_call({unregister_service, JidBinary}, _From, State) ->
    true = ets:delete(?SERVICES, JidBinary),
    {reply, ok, State};
handle_call(reset, _From, _State) ->
    [erlang:cancel_timer(TRef) || {_, _, TRef} <- ets:tab2list(?CALLBACKS)],
    [true = ets:delete_all_objects(Tab) || Tab <- [?CALLBACKS, ?SERVICES, ?ROUTED]],
    {reply, ok, #state{}}.

-spec handle_cast(term(), #state{}) -> {noreply, #state{}}.
handle_cast(_Msg, State) ->
    {noreply, State}.

-spec handle_info(term(), #state{}) -> {noreply, #state{}}.
handle_info({iq_timeout, Id}, State) ->
    case ets:take(?CALLBACKS, Id) of
        [{Id, Callback, _TRef}] ->
            spawn(fun() -> Callback(undefined, undefined, undefined, timeout) end);
        [] ->
            ok
    end,
    {noreply, State};
handle_info(Msg, State) ->
    ?LOG_WARNING(#{what => unexpected_message, msg => Msg}),
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

%% An IQ request to the domain goes to its handler, and the reply back to the
%% sender; a result or error is the reply to a route_iq request.
-spec process_iq(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
process_iq(From, To, Acc, El) ->
    case jlib:iq_query_or_response_info(El) of
        #iq{type = Type, id = Id} = IQ when Type =:= result; Type =:= error ->
            case gen_server:call(?MODULE, {take_iq_callback, Id}) of
                {ok, Callback} -> _ = Callback(From, To, Acc, IQ);
                error -> ok
            end,
            Acc;
        _ ->
            case gen_iq_handler:process_iq(ejabberd_local, handlers_domain(To), Acc, From, To, El) of
                {error, no_handler} ->
                    Error = mongoose_xmpp_errors:feature_not_implemented(),
                    ejabberd_router:route(To, From, Acc, jlib:make_error_reply(El, Error));
                Ignored when Ignored =:= ignore; Ignored =:= not_a_request ->
                    Acc;
                Reply ->
                    ejabberd_router:route(To, From, Acc, Reply)
            end
    end.

-spec service_domain(binary()) -> jid:lserver().
service_domain(Domain) ->
    case jid:from_binary(Domain) of
        #jid{luser = <<>>, lserver = LServer, lresource = <<>>} -> LServer;
        _ -> error(#{what => service_must_be_a_domain, jid => Domain})
    end.

%% Unique per node and run; the node's hash tells which node sent the request.
-spec make_iq_id() -> binary().
make_iq_id() ->
    Random = integer_to_binary(rand:uniform(1 bsl 64), 16),
    <<Random/binary, $-, (integer_to_binary(erlang:phash2(node())))/binary>>.
