%% Stand-in for MongooseIM's ejabberd_router: the entry point for sending a
%% stanza anywhere, with MongooseIM's routing chain reduced to what a node without
%% clustering and s2s does:
%%
%% 1. a domain served by a component (a fake service registered with
%%    ejabberd_local:register_service/2, as an external component registers its
%%    domain): the stanza is handed to it in a new process, as delivery over the
%%    component's connection would be, and its reply is routed back from there;
%% 2. a local domain (mongoose_domain_api knows its host type): local delivery as
%%    mongoose_local_delivery does it, the Acc stripped for the recipient and the
%%    `filter_local_packet' hook run first (a handler may drop the stanza), then
%%    ejabberd_local (the server itself, IQ replies, users through ejabberd_sm);
%% 3. any other domain goes to s2s, which has no connection to open here: the
%%    sender gets `remote-server-not-found' back from another process, as from a
%%    failed outgoing connection (errors and results are dropped instead).
%%
%% Every stanza passed to route/4 is recorded (ejabberd_local:routed/0).
-module(ejabberd_router).

-include_lib("kernel/include/logger.hrl").
-include("jlib.hrl").

-export([route/4]).

%% @doc Routes El from From to To; returns Acc.
-spec route(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
route(#jid{} = From, #jid{lserver = LServer} = To, Acc, #xmlel{} = El) ->
    ejabberd_local:record_routed(From, To, El),
    case ejabberd_local:lookup_service(To) of
        {ok, Service} ->
            _ = spawn(fun() -> deliver_to_service(Service, From, To, Acc, El) end),
            Acc;
        error ->
            case mongoose_domain_api:get_host_type(LServer) of
                {ok, HostType} -> deliver_locally(HostType, From, To, Acc, El);
                {error, not_found} -> route_to_remote_server(From, To, Acc, El)
            end
    end.

-spec deliver_locally(binary(), jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) ->
          mongoose_acc:t().
deliver_locally(HostType, From, To, Acc, El) ->
    Stripped = mongoose_acc:strip(#{lserver => To#jid.lserver, host_type => HostType,
                                    from_jid => From, to_jid => To, element => El}, Acc),
    case gen_hook:run_fold(filter_local_packet, HostType, {From, To, Stripped, El}, #{}) of
        {_, {From1, To1, Acc1, El1}} -> _ = ejabberd_local:route(From1, To1, Acc1, El1);
        {_, drop} -> ok
    end,
    Acc.

-spec route_to_remote_server(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) ->
          mongoose_acc:t().
route_to_remote_server(From, To, Acc, El) ->
    case exml_query:attr(El, <<"type">>) of
        Type when Type =:= <<"error">>; Type =:= <<"result">> ->
            ok;
        _ ->
            Error = jlib:make_error_reply(El, mongoose_xmpp_errors:remote_server_not_found()),
            _ = spawn(fun() -> route(To, From, reply_acc(From, To, Acc, Error), Error) end),
            ok
    end,
    Acc.

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
            _ = route(To, From, reply_acc(From, To, Acc, Reply), Reply),
            ok
    catch
        Class:Reason:Stacktrace ->
            ?LOG_ERROR(#{what => fake_service_failed, from => jid:to_binary(From),
                         to => jid:to_binary(To), class => Class, reason => Reason,
                         stacktrace => Stacktrace}),
            ok
    end.

%% A reply travels from the request's recipient back to its sender.
-spec reply_acc(jid:jid(), jid:jid(), mongoose_acc:t(), exml:element()) -> mongoose_acc:t().
reply_acc(RequestFrom, RequestTo, Acc, Reply) ->
    mongoose_acc:strip(#{lserver => RequestFrom#jid.lserver,
                         host_type => mongoose_acc:host_type(Acc),
                         element => Reply, from_jid => RequestTo, to_jid => RequestFrom}, Acc).
