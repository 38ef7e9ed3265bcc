%% mod_event_pusher_hook_translator: each hook it handles gives the right
%% event (or none), the Acc comes back with the backends' `event_pusher' keys
%% made permanent, and the hooks are registered with MongooseIM's priorities.
%%
%% The hooks are run through gen_hook, as MongooseIM runs them. Events are
%% observed through the test backend mod_event_pusher_test (test/support), which
%% mod_event_pusher calls for the `test' key of its options.
-module(hook_translator_SUITE).

-compile([export_all, nowarn_export_all]).

-include_lib("common_test/include/ct.hrl").
-include_lib("stdlib/include/assert.hrl").
-include("mod_event_pusher_events.hrl").

-define(HT, <<"localhost">>).
-define(LOCATION, #{mfa => {?MODULE, ?FUNCTION_NAME, ?FUNCTION_ARITY},
                    line => ?LINE, file => ?FILE}).
-define(TRANSLATOR, mod_event_pusher_hook_translator).

all() ->
    [message_types_give_out_events_on_delivery,
     message_types_give_in_events_on_sending,
     error_and_unknown_types_give_no_event,
     non_message_stanzas_give_no_event_on_delivery,
     dropped_packet_passes_through,
     user_available_gives_online_event,
     unset_presence_gives_offline_event,
     unacknowledged_message_gives_unack_event,
     backend_keys_are_merged_back_as_permanent,
     backend_keys_are_merged_into_the_delivered_packet_acc,
     hooks_are_registered_with_priorities,
     delete_hooks_removes_all_handlers].

init_per_suite(Config) ->
    mongoose_host:start(#{hosts => [?HT]}),
    Config.

end_per_suite(_Config) ->
    mongoose_host:stop().

%% The event pusher is configured with the test backend only and is not
%% started: the translator's handlers call mod_event_pusher:push_event/2,
%% which only reads the configuration.
init_per_testcase(_Case, Config) ->
    mongoose_config:set_opt({modules, ?HT}, #{mod_event_pusher => #{test => #{sink => self()}}}),
    ?TRANSLATOR:add_hooks(?HT),
    Config.

end_per_testcase(_Case, _Config) ->
    ?TRANSLATOR:delete_hooks(?HT),
    mongoose_config:unset_opt({modules, ?HT}).

%%% Cases

message_types_give_out_events_on_delivery(_Config) ->
    lists:foreach(
      fun({TypeAttr, Type}) ->
              El = message(TypeAttr),
              {ok, {From, To, _Acc, Packet}} = run_filter_local_packet(alice(), bob(), El),
              ?assertEqual({alice(), bob(), El}, {From, To, Packet}),
              ?assertEqual([#chat_event{type = Type, direction = out, from = alice(), to = bob(),
                                        packet = El}],
                           pushed_events(), TypeAttr)
      end, chat_types()).

message_types_give_in_events_on_sending(_Config) ->
    lists:foreach(
      fun({TypeAttr, Type}) ->
              El = message(TypeAttr),
              {ok, _Acc} = run_fold(user_send_message, ?HT, acc(El, alice(), bob()), #{}),
              ?assertEqual([#chat_event{type = Type, direction = in, from = alice(), to = bob(),
                                        packet = El}],
                           pushed_events(), TypeAttr)
      end, chat_types()).

error_and_unknown_types_give_no_event(_Config) ->
    lists:foreach(
      fun(TypeAttr) ->
              El = message(TypeAttr),
              Acc = acc(El, alice(), bob()),
              ?assertEqual({ok, {alice(), bob(), Acc, El}},
                           run_fold(filter_local_packet, ?HT, {alice(), bob(), Acc, El}, #{})),
              ?assertEqual({ok, Acc}, run_fold(user_send_message, ?HT, Acc, #{})),
              ?assertEqual([], pushed_events(), TypeAttr)
      end, [<<"error">>, <<"unknown">>, <<"">>]).

%% MongooseIM 6.4 would make a `normal' chat event of a type-less presence or
%% IQ; the translator only looks at messages.
non_message_stanzas_give_no_event_on_delivery(_Config) ->
    Stanzas = [stanza(<<"presence">>, undefined),
               stanza(<<"presence">>, <<"unavailable">>),
               stanza(<<"iq">>, undefined),
               stanza(<<"iq">>, <<"get">>)],
    lists:foreach(
      fun(El) ->
              Acc = acc(El, alice(), bob()),
              ?assertEqual({ok, {alice(), bob(), Acc, El}},
                           run_fold(filter_local_packet, ?HT, {alice(), bob(), Acc, El}, #{})),
              ?assertEqual([], pushed_events(), El)
      end, Stanzas).

dropped_packet_passes_through(_Config) ->
    ?assertEqual({ok, drop}, run_fold(filter_local_packet, ?HT, drop, #{})),
    ?assertEqual([], pushed_events()).

user_available_gives_online_event(_Config) ->
    Acc = acc(stanza(<<"presence">>, undefined), alice(), jid:to_bare(alice())),
    {ok, _} = run_fold(user_available, ?HT, Acc, #{jid => alice()}),
    ?assertEqual([#user_status_event{jid = alice(), status = online}], pushed_events()).

unset_presence_gives_offline_event(_Config) ->
    Acc = acc(stanza(<<"presence">>, <<"unavailable">>), alice(), jid:to_bare(alice())),
    {ok, _} = run_fold(unset_presence, ?HT, Acc, #{jid => alice(), status => <<"bye">>}),
    ?assertEqual([#user_status_event{jid = alice(), status = offline}], pushed_events()).

unacknowledged_message_gives_unack_event(_Config) ->
    Acc = acc(message(<<"chat">>), bob(), alice()),
    {ok, _} = run_fold(unacknowledged_message, ?HT, Acc, #{jid => alice()}),
    ?assertEqual([#unack_msg_event{to = alice()}], pushed_events()).

%% The test backend appends each event to `(event_pusher, pushed_events)' and
%% sets `(mod_event_pusher_test, pushed)'. Only the former comes back, as a
%% permanent key, and keys the Acc had before are kept.
backend_keys_are_merged_back_as_permanent(_Config) ->
    El = message(<<"chat">>),
    Acc0 = mongoose_acc:set(c2s, origin_sid, sid, acc(El, alice(), bob())),
    {ok, Acc1} = run_fold(user_send_message, ?HT, Acc0, #{}),
    ChatEvent = #chat_event{type = chat, direction = in, from = alice(), to = bob(), packet = El},
    ?assertEqual([ChatEvent], mongoose_acc:get(event_pusher, pushed_events, Acc1)),
    ?assertEqual(undefined, mongoose_acc:get(mod_event_pusher_test, pushed, undefined, Acc1)),
    ?assertEqual(sid, mongoose_acc:get(c2s, origin_sid, Acc1)),
    Stripped = mongoose_acc:strip(#{lserver => ?HT, host_type => ?HT}, Acc1),
    ?assertEqual([{pushed_events, [ChatEvent]}], mongoose_acc:get(event_pusher, Stripped)),
    ?assertEqual(undefined, mongoose_acc:get(c2s, origin_sid, undefined, Stripped)),
    %% A later event about the same stanza sees what the first push recorded.
    {ok, Acc2} = run_fold(unacknowledged_message, ?HT, Stripped, #{jid => bob()}),
    UnackEvent = #unack_msg_event{to = bob()},
    ?assertEqual([UnackEvent, ChatEvent], mongoose_acc:get(event_pusher, pushed_events, Acc2)),
    ?assertEqual([ChatEvent, UnackEvent], pushed_events()).

backend_keys_are_merged_into_the_delivered_packet_acc(_Config) ->
    El = message(<<"groupchat">>),
    {ok, {_, _, Acc, _}} = run_filter_local_packet(alice(), bob(), El),
    Event = #chat_event{type = groupchat, direction = out, from = alice(), to = bob(), packet = El},
    Stripped = mongoose_acc:strip(#{lserver => ?HT}, Acc),
    ?assertEqual([Event], mongoose_acc:get(event_pusher, pushed_events, Stripped)),
    ?assertEqual(undefined, mongoose_acc:get(mod_event_pusher_test, pushed, undefined, Acc)),
    ?assertEqual([Event], pushed_events()).

hooks_are_registered_with_priorities(_Config) ->
    Expected = [{filter_local_packet, filter_local_packet, 80},
                {user_send_message, user_send_message, 90},
                {user_available, user_present, 90},
                {unset_presence, user_not_present, 90},
                {unacknowledged_message, unacknowledged_message, 90}],
    lists:foreach(
      fun({Hook, Function, Priority}) ->
              Extra = #{hook_name => Hook, hook_tag => ?HT, host_type => ?HT},
              ?assertEqual([{Priority, fun ?TRANSLATOR:Function/3, Extra}],
                           gen_hook:get_handlers(Hook, ?HT))
      end, Expected),
    ?assertEqual(lists:sort([{Hook, ?HT, fun ?TRANSLATOR:Function/3, #{}, Priority}
                             || {Hook, Function, Priority} <- Expected]),
                 lists:sort(?TRANSLATOR:hooks(?HT))),
    %% Handlers are registered for the given host type only.
    {ok, _} = run_fold(user_send_message, <<"other">>,
                       acc(message(<<"chat">>), alice(), bob()), #{}),
    ?assertEqual([], pushed_events()).

delete_hooks_removes_all_handlers(_Config) ->
    ok = ?TRANSLATOR:delete_hooks(?HT),
    [?assertEqual([], gen_hook:get_handlers(Hook, ?HT))
     || {Hook, _, _, _, _} <- ?TRANSLATOR:hooks(?HT)],
    {ok, _} = run_filter_local_packet(alice(), bob(), message(<<"chat">>)),
    {ok, _} = run_fold(user_available, ?HT, acc(stanza(<<"presence">>, undefined),
                                                alice(), jid:to_bare(alice())),
                       #{jid => alice()}),
    ?assertEqual([], pushed_events()).

%%% Helpers

chat_types() ->
    [{<<"chat">>, chat}, {<<"groupchat">>, groupchat}, {<<"headline">>, headline},
     {<<"normal">>, normal}, {undefined, normal}].

alice() ->
    jid:make(<<"alice">>, ?HT, <<"phone">>).

bob() ->
    jid:make(<<"bob">>, ?HT, <<"laptop">>).

message(Type) ->
    El = stanza(<<"message">>, Type),
    El#xmlel{children = [#xmlel{name = <<"body">>, children = [#xmlcdata{content = <<"hi">>}]}]}.

stanza(Name, undefined) ->
    #xmlel{name = Name, attrs = #{<<"from">> => jid:to_binary(alice()),
                                  <<"to">> => jid:to_binary(bob())}};
stanza(Name, Type) ->
    El = stanza(Name, undefined),
    El#xmlel{attrs = (El#xmlel.attrs)#{<<"type">> => Type}}.

acc(El, From, To) ->
    mongoose_acc:new(#{location => ?LOCATION, lserver => ?HT, host_type => ?HT,
                       element => El, from_jid => From, to_jid => To}).

%% Runs filter_local_packet as routing does, with the Acc of the stanza.
run_filter_local_packet(From, To, El) ->
    run_fold(filter_local_packet, ?HT, {From, To, acc(El, From, To), El}, #{}).

%% gen_hook:run_fold/4, and the case fails right there if a handler crashed: gen_hook
%% (as MongooseIM's) logs the crash as `hook_failed' and goes on with the Acc as it
%% was, which is just what "no event, Acc unchanged" expects. (log_guard would fail
%% the case at its end too; this names the hook run that crashed.)
run_fold(Hook, HostType, Acc, Params) ->
    Result = gen_hook:run_fold(Hook, HostType, Acc, Params),
    ?assertEqual([], [Report || #{msg := {report, Report}} <- log_guard:logged(hook_failed)],
                 {hook, Hook}),
    Result.

%% The events the test backend received so far, oldest first. The backend
%% runs in this process (inside the hook), so they are all in the mailbox.
pushed_events() ->
    receive
        {mod_event_pusher_test, Event, _Acc} -> [Event | pushed_events()]
    after 0 ->
            []
    end.
