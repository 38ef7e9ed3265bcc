%% @doc XEP-0357 push notifications, as MongooseIM 6.4 does them: users enable and
%% disable their push services with IQs in urn:xmpp:push:0 (registrations kept by
%% the mod_event_pusher_push_backend behaviour), and messages for offline users are
%% published to those services.
%%
%% What to publish and to which services is decided here, on the hook path, by the
%% plugin module (as in MongooseIM). Publishing to a real pubsub service goes through
%% the Rust instance: it queues the notification, builds the publish IQ and, with
%% `wpool.workers' publishes in progress at once, asks this host type's reporter
%% process to route it (ejabberd_local:route_iq/5) and waits for the reply. An error
%% reply of type cancel disables the registration. Virtual pubsub hosts run the
%% push_notifications hook instead, as in MongooseIM.
-module(mod_event_pusher_push).
-behaviour(gen_mod).
-behaviour(mod_event_pusher).
-behaviour(mod_event_pusher_instance).

-export([start/2, stop/1, config_spec/0, supported_features/0, instrumentation/1]).
-export([push_event/2, iq_handler/4, remove_user/3]).
-export([handle_report/3, handle_route/4, stats/1]).
-export([is_virtual_pubsub_host/3, disable_node/4, publish_to_pubsub/4]).

-include("mod_event_pusher_events.hrl").
-include("mod_event_pusher_nif.hrl").
-include("mongoose_config_spec.hrl").
-include("session.hrl").
-include_lib("kernel/include/logger.hrl").

-define(KEY, push).
-define(PUSH_SUMMARY, <<"urn:xmpp:push:summary">>).

-type host_type() :: binary().
%% A user's registration: pubsub service JID, node and publish-options form.
-type publish_service() :: {PubSub :: jid:jid(), Node :: binary(), Form :: #{binary() => binary()}}.
-export_type([publish_service/0]).

%% gen_mod

-spec start(host_type(), gen_mod:module_opts()) -> ok.
start(HostType, Opts0) ->
    Opts = #{iqdisc := IQDisc} = mod_event_pusher_config:with_defaults(config_spec(), Opts0),
    ok = mod_event_pusher_push_backend:init(HostType, Opts),
    mod_event_pusher_push_plugin:init(HostType, Opts),
    {Instance, Config} = start_config(Opts),
    mod_event_pusher_instance:start_or_raise(
      HostType, ?KEY, ?MODULE,
      fun(Reporter) -> mod_event_pusher_nif:start_push(Instance, Config, Reporter) end,
      event_pusher_push_start_failed),
    [gen_iq_handler:add_iq_handler(Component, HostType, ?NS_PUSH, ?MODULE, iq_handler, IQDisc)
     || Component <- [ejabberd_local, ejabberd_sm]],
    gen_hook:add_handler(remove_user, HostType, fun ?MODULE:remove_user/3, #{}, 90),
    ok.

-spec stop(host_type()) -> ok.
stop(HostType) ->
    gen_hook:delete_handler(remove_user, HostType, fun ?MODULE:remove_user/3, #{}, 90),
    [gen_iq_handler:remove_iq_handler(Component, HostType, ?NS_PUSH)
     || Component <- [ejabberd_local, ejabberd_sm]],
    mod_event_pusher_instance:stop_with_drain_option(HostType, ?KEY, ?MODULE).

-spec supported_features() -> [atom()].
supported_features() ->
    [dynamic_domains].

%% @doc `[modules.mod_event_pusher.push]': MongooseIM's options (`backend' names a
%% storage module mod_event_pusher_push_<backend>, which must exist; `wpool.workers'
%% is the number of publishes in progress at once), plus ours: `publish_timeout_ms',
%% `queue.*' and `drain_timeout_ms'.
-spec config_spec() -> #section{}.
config_spec() ->
    WPool = #section{items = WPoolItems} =
        mongoose_config_spec:wpool(#{<<"strategy">> => available_worker}),
    %% MongooseIM's spec, with our bound on workers (the publishes in progress at once)
    Workers = mod_event_pusher_config:bounded(positive, concurrency),
    Items = #{<<"iqdisc">> => mongoose_config_spec:iqdisc(),
              <<"backend">> => #option{type = atom, validate = {module, mod_event_pusher_push}},
              <<"wpool">> => WPool#section{items = WPoolItems#{<<"workers">> := Workers},
                                           include = always},
              <<"plugin_module">> => #option{type = atom, validate = module},
              <<"virtual_pubsub_hosts">> =>
                  #list{items = #option{type = string,
                                        validate = subdomain_template,
                                        process = fun mongoose_subdomain_utils:make_subdomain_pattern/1}},
              <<"publish_timeout_ms">> => mod_event_pusher_config:bounded(positive,
                                                                           duration_ms)},
    Delivery = maps:without([<<"retry">>], mod_event_pusher_delivery:config_items()),
    #section{items = maps:merge(Items, Delivery),
             defaults = maps:merge(#{<<"iqdisc">> => one_queue,
                                     <<"backend">> => mnesia,
                                     <<"plugin_module">> => mod_event_pusher_push_plugin_defaults,
                                     <<"virtual_pubsub_hosts">> => [],
                                     <<"publish_timeout_ms">> => 32000},
                                   mod_event_pusher_delivery:config_defaults())}.

%% @doc Every publish to a pubsub service and its fate (MongooseIM has no such
%% metrics), and the queue's counters.
-spec instrumentation(host_type()) -> [mongoose_instrument:spec()].
instrumentation(HostType) ->
    Labels = #{host_type => HostType},
    [{mod_event_pusher_push_publish, Labels,
      #{metrics => #{routed => spiral, replied => spiral, error_replied => spiral,
                     timed_out => spiral, disabled => spiral, time => histogram}}},
     {mod_event_pusher_push_delivery, Labels,
      #{metrics => #{delivered => spiral, retried => spiral, failed => spiral,
                     dropped => spiral, skipped => spiral}}}].

-spec stats(host_type()) -> mod_event_pusher_nif:stats() | {error, not_running}.
stats(HostType) ->
    mod_event_pusher_instance:stats(HostType, ?KEY).

%% mod_event_pusher: the hook path

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, Event = #chat_event{direction = out, to = To, type = Type})
  when Type =:= chat; Type =:= groupchat ->
    do_push_event(Acc, Event, jid:to_bare(To));
push_event(Acc, Event = #unack_msg_event{to = To}) ->
    do_push_event(Acc, Event, jid:to_bare(To));
push_event(Acc, _Event) ->
    Acc.

do_push_event(Acc, Event, BareRecipient) ->
    case mod_event_pusher_push_plugin:prepare_notification(Acc, Event) of
        skip ->
            Acc;
        Payload ->
            HostType = mongoose_acc:host_type(Acc),
            case mod_event_pusher_push_backend:get_publish_services(HostType, BareRecipient) of
                {ok, Services} ->
                    Filtered = mod_event_pusher_push_plugin:should_publish(Acc, Event, Services),
                    mod_event_pusher_push_plugin:publish_notification(Acc, Event, Payload,
                                                                      Filtered);
                {error, Reason} ->
                    ?LOG_ERROR(#{what => event_pusher_push_services_not_read,
                                 host_type => HostType, user => jid:to_binary(BareRecipient),
                                 reason => Reason}),
                    Acc
            end
    end.

%% @doc Queues the publish of Payload to a real pubsub service for User; a full queue
%% or a stopped instance is counted by the instance. The instance holds the record and
%% hands it back whole when its turn comes; its IQ is built then (handle_route/4).
-spec publish_to_pubsub(host_type(), jid:jid(), publish_service(), [{binary(), binary()}]) -> ok.
publish_to_pubsub(HostType, User, {PubSub, Node, Form}, Payload) ->
    case mod_event_pusher_instance:instance(HostType, ?KEY) of
        undefined ->
            ok;
        Instance ->
            Publish = #push_publish{user = User, pubsub = PubSub, node = Node,
                                    payload = Payload, options = Form,
                                    tag = jid:to_bare_binary(User)},
            _ = mod_event_pusher_nif:push(Instance, Publish),
            ok
    end.

%% XEP-0357: <pubsub><publish node><item><notification> with the summary form, then
%% <publish-options> when the registration gave a form.
pubsub_element(Node, Payload, Options) ->
    Notification = #xmlel{name = <<"notification">>, attrs = #{<<"xmlns">> => ?NS_PUSH},
                          children = [submit_form(?PUSH_SUMMARY, Payload)]},
    Publish = #xmlel{name = <<"publish">>, attrs = #{<<"node">> => Node},
                     children = [#xmlel{name = <<"item">>, children = [Notification]}]},
    PublishOptions = [#xmlel{name = <<"publish-options">>,
                             children = [submit_form(?NS_PUBSUB_PUB_OPTIONS, maps:to_list(Options))]}
                      || map_size(Options) > 0],
    #xmlel{name = <<"pubsub">>, attrs = #{<<"xmlns">> => ?NS_PUBSUB},
           children = [Publish | PublishOptions]}.

submit_form(FormType, Fields) ->
    mongoose_data_forms:form(#{type => <<"submit">>, ns => FormType,
                               fields => [#{var => Var, values => [Value]} || {Var, Value} <- Fields]}).

jid_server(#jid{lserver = LServer}) -> LServer.

-spec is_virtual_pubsub_host(host_type(), RecipientDomain :: binary(),
                             PubSubDomain :: binary()) -> boolean().
is_virtual_pubsub_host(HostType, RecipientDomain, PubSubDomain) ->
    Patterns = gen_mod:get_module_opt(HostType, ?MODULE, virtual_pubsub_hosts),
    lists:any(fun(Pattern) ->
                      mongoose_subdomain_utils:is_subdomain(Pattern, RecipientDomain, PubSubDomain)
              end, Patterns).

%% @doc Removes one registration (or all nodes of PubSub when Node is undefined):
%% from the user's sessions and from storage.
-spec disable_node(host_type(), jid:jid(), jid:jid(), binary() | undefined) -> ok | {error, term()}.
disable_node(HostType, User, PubSub, Node) ->
    remove_from_sessions(User, PubSub, Node),
    mod_event_pusher_push_backend:disable(HostType, jid:to_bare(User), PubSub, Node).

%% The IQ handler (both components)

-spec iq_handler(jid:jid(), jid:jid(), mongoose_acc:t(), jlib:iq()) -> {mongoose_acc:t(), jlib:iq()}.
iq_handler(_From, _To, Acc, IQ = #iq{type = get, sub_el = Request}) ->
    {Acc, IQ#iq{type = error, sub_el = [Request, mongoose_xmpp_errors:not_allowed()]}};
iq_handler(From, _To, Acc, IQ = #iq{type = set, sub_el = Request}) ->
    HostType = mongoose_acc:host_type(Acc),
    case parse_request(Request) of
        {enable, PubSub, Node, Form} ->
            ok = mod_event_pusher_push_backend:enable(HostType, jid:to_bare(From), PubSub, Node,
                                                      Form),
            Sid = mongoose_acc:get(c2s, origin_sid, undefined, Acc),
            ejabberd_sm:store_info(From, Sid, publish_service, {PubSub, Node, Form}),
            {Acc, IQ#iq{type = result, sub_el = []}};
        {disable, PubSub, Node} ->
            ok = disable_node(HostType, From, PubSub, Node),
            {Acc, IQ#iq{type = result, sub_el = []}};
        bad_request ->
            {Acc, IQ#iq{type = error, sub_el = [Request, mongoose_xmpp_errors:bad_request()]}}
    end.

parse_request(#xmlel{name = <<"enable">>} = Request) ->
    case {pubsub_jid(Request), exml_query:attr(Request, <<"node">>, <<>>),
          publish_options(mongoose_data_forms:find_form(Request))} of
        {error, _, _} -> bad_request;
        {_, <<>>, _} -> bad_request;
        {_, _, error} -> bad_request;
        {PubSub, Node, Form} -> {enable, PubSub, Node, Form}
    end;
parse_request(#xmlel{name = <<"disable">>} = Request) ->
    case {pubsub_jid(Request), exml_query:attr(Request, <<"node">>)} of
        {error, _} -> bad_request;
        {_, <<>>} -> bad_request;
        {PubSub, Node} -> {disable, PubSub, Node}
    end;
parse_request(_Request) ->
    bad_request.

pubsub_jid(Request) ->
    case jid:from_binary(exml_query:attr(Request, <<"jid">>, <<>>)) of
        error -> error;
        PubSub -> jid:to_bare(PubSub)
    end.

%% No form: none. A form: submitted, of the publish-options type, one value a field.
publish_options(undefined) ->
    #{};
publish_options(FormEl) ->
    case mongoose_data_forms:parse_form_fields(FormEl) of
        #{type := <<"submit">>, ns := ?NS_PUBSUB_PUB_OPTIONS, kvs := Fields} ->
            case lists:all(fun({_, Values}) -> length(Values) =:= 1 end, maps:to_list(Fields)) of
                true -> maps:map(fun(_Var, [Value]) -> Value end, Fields);
                false -> error
            end;
        _ ->
            error
    end.

remove_from_sessions(User, PubSub, Node) ->
    [ejabberd_sm:remove_info(jid:replace_resource(User, mongoose_session:get_resource(Session)),
                             Sid, publish_service)
     || Session = #session{sid = Sid} <- ejabberd_sm:get_raw_sessions(jid:to_bare(User)),
        {publish_service, {SessionPubSub, SessionNode, _}}
            <- [mongoose_session:get_info(Session, publish_service, undefined)],
        SessionPubSub =:= PubSub, Node =:= undefined orelse Node =:= SessionNode],
    ok.

%% @doc `remove_user': every registration of the user goes.
-spec remove_user(mongoose_acc:t(), #{jid := jid:jid()}, gen_hook:extra()) ->
          {ok, mongoose_acc:t()}.
remove_user(Acc, #{jid := User}, #{host_type := HostType}) ->
    Result = mod_event_pusher_push_backend:disable(HostType, jid:to_bare(User)),
    mongoose_lib:log_if_backend_error(Result, ?MODULE, ?LINE, {Acc, User}),
    {ok, Acc}.

%% Routing publishes and their replies, in the reporter process

%% @doc A publish whose turn has come: its IQ, built here, is routed from the
%% recipient's domain to the pubsub service; the reply (or timeout) goes back to the
%% instance. An error reply of type cancel means the registration will never work
%% again: it is disabled.
-spec handle_route(host_type(), push, mod_event_pusher_nif:instance(),
                   {non_neg_integer(), mod_event_pusher_nif:push_publish()}) -> ok.
handle_route(HostType, ?KEY, Instance,
             {Id, #push_publish{user = User, pubsub = PubSub, node = Node, payload = Payload,
                                options = Options}}) ->
    From = jid:make_noprep(<<>>, jid_server(User), <<>>),
    IQ = #iq{type = set, sub_el = [pubsub_element(Node, Payload, Options)]},
    Acc = mongoose_acc:new(#{location => #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                                           file => ?FILE, line => ?LINE},
                             host_type => HostType,
                             lserver => jid_server(User), element => jlib:iq_to_xml(IQ),
                             from_jid => From, to_jid => PubSub}),
    mongoose_instrument:execute(mod_event_pusher_push_publish, #{host_type => HostType},
                                #{routed => 1}),
    ejabberd_local:route_iq(From, PubSub, Acc, IQ,
                            fun(_From, _To, _Acc, Reply) ->
                                    Answer = reply(Reply),
                                    Answer =:= {error, <<"cancel">>} andalso
                                        disable_node(HostType, User, PubSub, Node),
                                    mod_event_pusher_nif:push_reply(Instance, Id, Answer)
                            end),
    ok.

reply(timeout) ->
    timeout;
reply(#iq{type = result}) ->
    result;
reply(#iq{type = error, sub_el = Children}) ->
    Errors = [E || E = #xmlel{name = <<"error">>} <- lists:flatten([Children])],
    case Errors of
        [Error | _] -> {error, exml_query:attr(Error, <<"type">>, <<"undefined">>)};
        [] -> {error, <<"undefined">>}
    end.

-spec handle_report(host_type(), push, mod_event_pusher_instance:report()) -> ok.
handle_report(HostType, ?KEY, Report) ->
    Labels = #{host_type => HostType},
    mod_event_pusher_delivery:report(
      HostType, ?KEY, Report,
      #{delivery_event => mod_event_pusher_push_delivery,
        attempt => fun(Attempt) -> report_attempt(HostType, Labels, Attempt) end}).

report_attempt(_HostType, Labels, {_Tag, result, TimeUs, _Bytes}) ->
    mongoose_instrument:execute(mod_event_pusher_push_publish, Labels,
                                #{replied => 1, time => TimeUs});
report_attempt(_HostType, Labels, {_Tag, {error_reply, <<"cancel">>}, _TimeUs, _Bytes}) ->
    %% handle_route disabled the registration when the reply came.
    mongoose_instrument:execute(mod_event_pusher_push_publish, Labels,
                                #{error_replied => 1, disabled => 1});
report_attempt(_HostType, Labels, {_Tag, {error_reply, _Type}, _TimeUs, _Bytes}) ->
    mongoose_instrument:execute(mod_event_pusher_push_publish, Labels, #{error_replied => 1});
report_attempt(_HostType, Labels, {_Tag, _TimeoutOrNoRoute, _TimeUs, _Bytes}) ->
    mongoose_instrument:execute(mod_event_pusher_push_publish, Labels, #{timed_out => 1}).

%% Starting

start_config(Opts = #{wpool := #{workers := Workers}, publish_timeout_ms := Timeout}) ->
    %% As in MongooseIM, a publish is not retried: its reply (or timeout) is final.
    Retry = #{max_attempts => 1, base_backoff_ms => 100, max_backoff_ms => 100,
              deadline_ms => 1 bsl 40},
    {mod_event_pusher_delivery:instance_config(Opts#{retry => Retry}, Workers),
     #push_config{publish_timeout_ms = Timeout}}.
