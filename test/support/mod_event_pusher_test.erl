%% A test-only event-pusher backend, configured as the `test' key of
%% mod_event_pusher's options: #{test => #{sink => Pid}}. For every event it
%% sends `{mod_event_pusher_test, Event, Acc}' to the sink process and, like
%% the push backend, records the event in the Acc's `event_pusher' namespace
%% (key `pushed_events', newest first); it also sets a key outside that
%% namespace, which the hook translator must not take over.
-module(mod_event_pusher_test).

-export([push_event/2]).

-spec push_event(mongoose_acc:t(), mod_event_pusher:event()) -> mongoose_acc:t().
push_event(Acc, Event) ->
    HostType = mongoose_acc:host_type(Acc),
    Sink = gen_mod:get_module_opt(HostType, mod_event_pusher, [test, sink]),
    Sink ! {?MODULE, Event, Acc},
    Acc1 = mongoose_acc:append(event_pusher, pushed_events, Event, Acc),
    mongoose_acc:set(?MODULE, pushed, true, Acc1).
