%% Stand-in for MongooseIM's gen_iq_handler (the old, module-and-function
%% API): handlers of IQ requests per component (ejabberd_local = IQs to a
%% domain, ejabberd_sm = IQs to a user), domain and namespace.
%%
%% The handlers live in an ETS table owned by this server. ejabberd_local and
%% ejabberd_sm deliver a routed request with process_iq/6 (not in MongooseIM), which
%% calls the handler in the routing process (IQDisc is checked and kept but not
%% acted upon) and returns the reply element for them to route back.
-module(gen_iq_handler).
-behaviour(gen_server).

-include_lib("kernel/include/logger.hrl").
-include("jlib.hrl").

%% Service
-export([start_link/0, start/0, stop/0]).
%% API
-export([add_iq_handler/6, remove_iq_handler/3]).
%% Test control (not in MongooseIM)
-export([process_iq/6, lookup_iq_handler/3]).
%% gen_server
-export([init/1, handle_call/3, handle_cast/2]).

-export_type([component/0, iqdisc/0]).

-type component() :: ejabberd_local | ejabberd_sm.
-type iqdisc() :: no_queue | one_queue | parallel | {queues, pos_integer()}.
-type domain() :: binary().
-type namespace() :: binary().

%% {{Component, Domain, NS}, Module, Function, IQDisc}
-define(TABLE, gen_iq_handler_handlers).

%%% Service

-spec start_link() -> {ok, pid()} | {error, term()}.
start_link() ->
    gen_server:start_link({local, ?MODULE}, ?MODULE, [], []).

%% @doc Starts the server without a link (tests start it from short-lived processes).
-spec start() -> {ok, pid()} | {error, term()}.
start() ->
    gen_server:start({local, ?MODULE}, ?MODULE, [], []).

%% @doc Stops the server; all handlers are removed.
-spec stop() -> ok.
stop() ->
    gen_server:stop(?MODULE).

%%% API

%% @doc Makes `Module:Function(From, To, Acc, IQ) -> {Acc, #iq{} | ignore}'
%% handle the requests of namespace NS to Domain in Component. Replaces an
%% earlier handler of the same key.
-spec add_iq_handler(component(), domain(), namespace(), module(), atom(), iqdisc()) -> ok.
add_iq_handler(Component, Domain, NS, Module, Function, IQDisc)
  when (Component =:= ejabberd_local orelse Component =:= ejabberd_sm),
       is_binary(Domain), is_binary(NS), is_atom(Module), is_atom(Function) ->
    check_iqdisc(IQDisc),
    gen_server:call(?MODULE, {add, {Component, Domain, NS}, Module, Function, IQDisc}).

%% @doc Removes the handler (if any).
-spec remove_iq_handler(component(), domain(), namespace()) -> ok.
remove_iq_handler(Component, Domain, NS) ->
    gen_server:call(?MODULE, {remove, {Component, Domain, NS}}).

%%% Test control

%% @doc Delivers an `<iq/>' request element from From to To to the handler
%% of its child's namespace, as the component would, and returns the reply
%% element (`from'/`to' swapped, same id): the handler's #iq{} as an element,
%% or internal-server-error (with the original child) if the handler crashes
%% or returns something else. A request without exactly one child or with an
%% unknown type gets bad-request. `ignore' when the handler returns ignore,
%% `{error, no_handler}' when there is none, `not_a_request' for a result or error.
-spec process_iq(component(), domain(), mongoose_acc:t(), jid:jid(), jid:jid(),
                 exml:element()) -> exml:element() | ignore | not_a_request |
          {error, no_handler}.
process_iq(Component, Domain, Acc, From, To, #xmlel{name = <<"iq">>} = El) ->
    case jlib:iq_query_info(El) of
        #iq{xmlns = NS, sub_el = Child} = IQ ->
            case lookup_iq_handler(Component, Domain, NS) of
                {ok, {Module, Function, _IQDisc}} ->
                    call_handler(Module, Function, From, To, Acc, IQ, Child);
                error ->
                    {error, no_handler}
            end;
        invalid ->
            reply_element(From, To, exml_query:attr(El, <<"id">>, <<>>), error,
                          [C || #xmlel{} = C <- El#xmlel.children] ++ [mongoose_xmpp_errors:bad_request()]);
        reply ->
            not_a_request
    end.

-spec lookup_iq_handler(component(), domain(), namespace()) ->
          {ok, {module(), atom(), iqdisc()}} | error.
lookup_iq_handler(Component, Domain, NS) ->
    case ets:lookup(?TABLE, {Component, Domain, NS}) of
        [{_Key, Module, Function, IQDisc}] -> {ok, {Module, Function, IQDisc}};
        [] -> error
    end.

%%% gen_server

-spec init([]) -> {ok, no_state}.
init([]) ->
    ets:new(?TABLE, [named_table, protected, set, {read_concurrency, true}]),
    {ok, no_state}.

-spec handle_call(term(), gen_server:from(), no_state) -> {reply, ok, no_state}.
handle_call({add, Key, Module, Function, IQDisc}, _From, State) ->
    true = ets:insert(?TABLE, {Key, Module, Function, IQDisc}),
    {reply, ok, State};
handle_call({remove, Key}, _From, State) ->
    true = ets:delete(?TABLE, Key),
    {reply, ok, State}.

-spec handle_cast(term(), no_state) -> {noreply, no_state}.
handle_cast(_Msg, State) ->
    {noreply, State}.

%%% Internals

-spec check_iqdisc(iqdisc()) -> ok.
check_iqdisc(IQDisc) when IQDisc =:= no_queue; IQDisc =:= one_queue; IQDisc =:= parallel ->
    ok;
check_iqdisc({queues, N}) when is_integer(N), N > 0 ->
    ok;
check_iqdisc(IQDisc) ->
    error(#{what => invalid_iqdisc, iqdisc => IQDisc}).

-spec call_handler(module(), atom(), jid:jid(), jid:jid(), mongoose_acc:t(), jlib:iq(),
                   exml:element()) -> exml:element() | ignore.
call_handler(Module, Function, From, To, Acc, #iq{id = Id} = IQ, Child) ->
    try
        case Module:Function(From, To, Acc, IQ) of
            {_Acc, ignore} -> ignore;
            {_Acc, #iq{type = Type, sub_el = SubEl}} when Type =:= result; Type =:= error ->
                {Type, SubEl};
            Other -> error({bad_iq_handler_return, Other})
        end
    of
        ignore -> ignore;
        {ReplyType, ReplySubEl} -> reply_element(From, To, Id, ReplyType, ReplySubEl)
    catch
        Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => process_iq_error, module => Module, function => Function,
                         class => Class, reason => Reason, stacktrace => Stacktrace}),
            reply_element(From, To, Id, error,
                          [Child, mongoose_xmpp_errors:internal_server_error()])
    end.

%% The reply goes from the request's recipient back to its sender.
-spec reply_element(jid:jid(), jid:jid(), binary(), result | error,
                    undefined | exml:element() | [exml:element()]) -> exml:element().
reply_element(From, To, Id, Type, SubEl) ->
    jlib:replace_from_to(To, From, jlib:iq_to_xml(#iq{id = Id, type = Type, sub_el = SubEl})).
