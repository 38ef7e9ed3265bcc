%% Stand-in for MongooseIM's ejabberd_router: the entry point for sending a
%% stanza anywhere.
%%
%% Every stanza is recorded (ejabberd_local:routed/0). A stanza to a JID with
%% a fake service (ejabberd_local:register_service/2) is handed to it in a new
%% process, as delivery to another component would be, and its reply is
%% routed back from that process; anything else goes to ejabberd_local:route/4,
%% which passes IQ replies to their route_iq callbacks and drops the rest.
-module(ejabberd_router).

-include_lib("kernel/include/logger.hrl").
-include("jlib.hrl").

-export([route/4]).

%% @doc Routes El from From to To; returns Acc.
-spec route(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
route(#jid{} = From, #jid{} = To, Acc, #xmlel{} = El) ->
    ejabberd_local:record_routed(From, To, El),
    case ejabberd_local:lookup_service(To) of
        {ok, Service} ->
            _ = spawn(fun() -> deliver_to_service(Service, From, To, Acc, El) end),
            Acc;
        error ->
            ejabberd_local:route(From, To, Acc, El)
    end.

%% The service sees the stanza as a remote entity would: with `from' and `to'.
%% Its reply gets the request's id if it has none, and travels with the
%% request's Acc as routing leaves it (stripped, the reply as its stanza).
-spec deliver_to_service(ejabberd_local:service_fun(), jid:jid(), jid:jid(),
                         mongoose_acc:t(), exml:element()) -> ok.
deliver_to_service(Service, From, To, Acc, El) ->
    try Service(jlib:replace_from_to(From, To, El)) of
        noreply ->
            ok;
        {reply, #xmlel{attrs = Attrs} = Reply0} ->
            Reply = case {maps:is_key(<<"id">>, Attrs), exml_query:attr(El, <<"id">>)} of
                        {false, Id} when is_binary(Id) ->
                            Reply0#xmlel{attrs = Attrs#{<<"id">> => Id}};
                        _ ->
                            Reply0
                    end,
            ReplyAcc = mongoose_acc:strip(#{lserver => From#jid.lserver,
                                            host_type => mongoose_acc:host_type(Acc),
                                            element => Reply, from_jid => To, to_jid => From},
                                          Acc),
            _ = route(To, From, ReplyAcc, Reply),
            ok
    catch
        Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => fake_service_failed, from => jid:to_binary(From),
                         to => jid:to_binary(To), class => Class, reason => Reason,
                         stacktrace => Stacktrace}),
            ok
    end.
