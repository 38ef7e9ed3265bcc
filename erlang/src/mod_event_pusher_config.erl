%% @doc Module options as our backends need them, whoever built the options map.
%%
%% MongooseIM's parser fills in the defaults of a module's config spec, so options read
%% from mongooseim.toml have every key. But MongooseIM's own tests build option maps
%% with MongooseIM's keys only, and `mongoose_modules:ensure_started/3' and
%% `replace_modules/3' pass on whatever they are given: our additive options (queue,
%% retry, drain, ...) may be absent. Each module therefore fills them in from its own
%% config spec, with the parser's rule: a default is used as is; a section with
%% `include = always' is filled in as if given empty. Keys that are present are kept.
%%
%% It also holds the upper bounds of our integer options and the URL check, so that a
%% value that could only fail later (a timer out of range, a URL no request can use)
%% is refused at load. MongooseIM 6.4's validators have no upper bound, so the bound is
%% a `process' step: the parser reports its error as "Node could not be processed"
%% with `reason => value_too_large' (or `invalid_url') and the option, bound and unit.
-module(mod_event_pusher_config).

-export([with_defaults/2, module_opts/2]).
-export([bounded/2, upper_bound/1, url_option/1, check_url/2]).

-include("mongoose_config_spec.hrl").

%% What each bound protects: a duration must fit Erlang timers and gen_server waits
%% (2^32-1 ms) with room to spare, and the NIF caps a drain at the same day; the NIF
%% runs at most 4096 deliveries at once; queue caps must fit memory.
-type limit() :: duration_ms | concurrency | queue_events | queue_bytes | attempts
               | message_bytes.
-export_type([limit/0]).

-define(LIMITS, #{duration_ms => {86400000, milliseconds},   % 1 day
                  concurrency => {4096, deliveries},
                  queue_events => {100000000, events},       % 10^8
                  queue_bytes => {17179869184, bytes},       % 16 GiB
                  attempts => {1000, attempts},
                  %% RabbitMQ's ceiling for its max_message_size
                  message_bytes => {536870912, bytes}}).    % 512 MiB

%% @doc Opts with every absent default of Spec filled in, recursively (sections, and
%% lists whose items are sections).
-spec with_defaults(#section{}, map()) -> map().
with_defaults(#section{items = Items, defaults = Defaults}, Opts) when is_map(Opts) ->
    WithDefaults = maps:fold(fun(Key, Value, Acc) -> add_absent(opt_key(Key), Value, Acc) end,
                             Opts, Defaults),
    maps:fold(fun(Key, Spec, Acc) when is_binary(Key) -> fill_item(opt_key(Key), Spec, Acc);
                 (_Default, _Spec, Acc) -> Acc
              end, WithDefaults, Items).

%% @doc The options a running module was started with, defaults filled in.
-spec module_opts(binary(), module()) -> map().
module_opts(HostType, Module) ->
    with_defaults(Module:config_spec(), gen_mod:get_module_opts(HostType, Module)).

%% @doc An integer option with MongooseIM's lower-bound validator (`positive' or
%% `non_negative') and our upper bound Limit, checked at load.
-spec bounded(positive | non_negative, limit()) -> #option{}.
bounded(Validator, Limit) ->
    #option{type = integer, validate = Validator,
            process = fun(Path, Value) -> check_bound(Limit, Path, Value) end}.

%% @doc The upper bound of Limit.
-spec upper_bound(limit()) -> pos_integer().
upper_bound(Limit) ->
    {Max, _Unit} = maps:get(Limit, ?LIMITS),
    Max.

%% @doc A string option holding an http(s) URL, checked at load; a value without
%% "://" is a host name and means https (MongooseIM's sns_host). The value is kept.
-spec url_option(https | none) -> #option{}.
url_option(ImpliedScheme) ->
    #option{type = string,
            process = fun(Path, Url) ->
                              case check_url(Url, ImpliedScheme) of
                                  ok -> Url;
                                  {error, Cause} -> error(#{what => invalid_url,
                                                            option => option_name(Path),
                                                            cause => Cause})
                              end
                      end}.

%% @doc Checks that Url is one the backends can send to: `http' or `https', a host
%% name or IP address, an optional port (1..65535) and path; no credentials, query or
%% fragment. ImpliedScheme is the scheme of a value without "://" (or none: required).
-spec check_url(string() | binary(), https | none) -> ok | {error, binary()}.
check_url(Url, ImpliedScheme) when is_binary(Url) ->
    check_url(unicode:characters_to_list(Url), ImpliedScheme);
check_url("", _ImpliedScheme) ->
    {error, <<"empty">>};
check_url(Url, ImpliedScheme) when is_list(Url) ->
    WithScheme = case {string:find(Url, "://"), ImpliedScheme} of
                     {nomatch, https} -> "https://" ++ Url;
                     _ -> Url
                 end,
    case uri_string:parse(WithScheme) of
        #{} = Parts -> check_url_parts(Parts);
        {error, _, _} -> {error, <<"not a valid URL">>}
    end;
check_url(_Url, _ImpliedScheme) ->
    {error, <<"not a string">>}.

check_url_parts(Parts) ->
    Checks = [{fun() -> lists:member(string:lowercase(maps:get(scheme, Parts, "")),
                                     ["http", "https"]) end,
               <<"the scheme must be http or https">>},
              {fun() -> is_host(maps:get(host, Parts, "")) end,
               <<"a host name or IP address is required">>},
              {fun() -> is_valid_port(maps:get(port, Parts, undefined)) end,
               <<"the port must be 1..65535">>},
              {fun() -> not maps:is_key(userinfo, Parts) end,
               <<"credentials in the URL are not supported">>},
              {fun() -> not maps:is_key(query, Parts) andalso not maps:is_key(fragment, Parts) end,
               <<"a query or fragment is not allowed">>}],
    case [Cause || {Check, Cause} <- Checks, not Check()] of
        [] -> ok;
        [Cause | _] -> {error, Cause}
    end.

%% An IP address, or a DNS name as HTTP clients accept it (a last label of digits
%% only would be read as an IPv4 address, so it must be one).
is_host("") ->
    false;
is_host(Host) ->
    case inet:parse_address(Host) of
        {ok, _} ->
            true;
        {error, einval} ->
            Labels = string:split(Host, ".", all),
            length(Host) =< 253
                andalso lists:all(fun is_dns_label/1, Labels)
                andalso not lists:all(fun is_digit/1, lists:last(Labels))
    end.

is_dns_label(Label) ->
    Label =/= "" andalso length(Label) =< 63 andalso lists:all(fun is_host_char/1, Label).

is_host_char(C) ->
    (C >= $a andalso C =< $z) orelse (C >= $A andalso C =< $Z) orelse is_digit(C)
        orelse C =:= $- orelse C =:= $_ orelse C > 127.

is_digit(C) -> C >= $0 andalso C =< $9.

is_valid_port(undefined) -> true;
is_valid_port(Port) -> is_integer(Port) andalso Port >= 1 andalso Port =< 65535.

check_bound(Limit, Path, Value) ->
    {Max, Unit} = maps:get(Limit, ?LIMITS),
    case Value =< Max of
        true -> Value;
        false -> error(#{what => value_too_large, option => option_name(Path),
                         max => Max, unit => Unit})
    end.

%% The parser's path is reversed: the option's own key first.
option_name([Key | _]) when is_binary(Key) -> Key;
option_name(_Path) -> undefined.

fill_item(Key, Spec = #section{}, Opts) ->
    case Opts of
        #{Key := Value} when is_map(Value) -> Opts#{Key := with_defaults(Spec, Value)};
        #{Key := _} -> Opts;
        #{} when Spec#section.include =:= always -> Opts#{Key => with_defaults(Spec, #{})};
        #{} -> Opts
    end;
fill_item(Key, #list{items = ItemSpec = #section{}}, Opts) ->
    case Opts of
        #{Key := Items} when is_list(Items) ->
            Opts#{Key := [fill_list_item(ItemSpec, Item) || Item <- Items]};
        #{} ->
            Opts
    end;
fill_item(_Key, _Spec, Opts) ->
    Opts.

fill_list_item(Spec, Item) when is_map(Item) -> with_defaults(Spec, Item);
fill_list_item(_Spec, Item) -> Item.

add_absent(Key, Value, Opts) ->
    case Opts of
        #{Key := _} -> Opts;
        #{} -> Opts#{Key => Value}
    end.

opt_key(Key) ->
    binary_to_atom(Key).
