%% `make lint': the production modules (erlang/src) call only OTP, each other and the
%% MongooseIM 6.4 host API listed in tools/mim_api.terms (from ../shared/MIM_API.md).
%% A call to anything else, e.g. a test-control function of the stand-in or a helper
%% of test/support, would work in our tests and fail inside MongooseIM.
-module(mim_api_check).

-export([main/0]).

-type mfa_call() :: {module(), atom(), arity()}.

%% @doc Prints each call outside the allowed API; error when there is one.
-spec main() -> ok | error.
main() ->
    Production = [list_to_atom(filename:basename(F, ".erl"))
                  || F <- filelib:wildcard("erlang/src/*.erl")],
    {ok, Allowed} = file:consult("tools/mim_api.terms"),
    Calls = external_calls(Production),
    Outside = [Call || {_From, {M, _, _} = Call} <- Calls,
                       not lists:member(M, Production), not is_otp(M),
                       not is_allowed(Call, Allowed)],
    case lists:usort(Outside) of
        [] ->
            io:format("mim_api_check: ~b production modules, ~b external calls, all within OTP "
                      "and MongooseIM 6.4's API~n", [length(Production), length(Calls)]);
        Bad ->
            [io:format("mim_api_check: ~p calls ~p:~p/~p, not in MongooseIM 6.4's API "
                       "(tools/mim_api.terms) nor OTP~n", [From, M, F, A])
             || {From, {M, F, A} = Call} <- Calls, lists:member(Call, Bad)],
            error
    end.

%% Calls from the production modules to other modules; calls through a variable
%% module (callback modules, plugins) are the configured modules' business.
-spec external_calls([module()]) -> [{mfa_call(), mfa_call()}].
external_calls(Modules) ->
    {ok, Xref} = xref:start([{xref_mode, functions}]),
    try
        [{ok, _} = xref:add_module(Xref, code:which(M), [{warnings, false}]) || M <- Modules],
        {ok, Calls} = xref:q(Xref, "XC"),
        [Call || {_, {M, _, _}} = Call <- Calls, M =/= '$M_EXPR']
    after
        xref:stop(Xref)
    end.

-spec is_otp(module()) -> boolean().
is_otp(Module) ->
    case code:which(Module) of
        preloaded -> true;
        Path when is_list(Path) -> lists:prefix(code:lib_dir(), Path);
        _ -> false
    end.

-spec is_allowed(mfa_call(), [{module(), [{atom(), arity()}]}]) -> boolean().
is_allowed({M, F, A}, Allowed) ->
    lists:member({F, A}, proplists:get_value(M, Allowed, [])).
