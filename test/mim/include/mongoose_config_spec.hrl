%% Stand-in for MongooseIM's include/mongoose_config_spec.hrl (record shapes of 6.4).
-ifndef(MONGOOSE_CONFIG_SPEC_HRL).
-define(MONGOOSE_CONFIG_SPEC_HRL, true).

-record(section, {items = #{} :: map(),
                  validate_keys = any :: any(),
                  required = [] :: [binary()] | all,
                  validate = any :: any(),
                  format_items = map :: map | list,
                  process = [] :: any(),
                  defaults = #{} :: map(),
                  wrap = default :: atom(),
                  include = when_present :: when_present | always}).

-record(list, {items :: any(),
               validate = any :: any(),
               format_items = list :: map | list,
               process = [] :: any(),
               wrap = default :: atom()}).

-record(option, {type :: atom(),
                 validate = any :: any(),
                 process = [] :: any(),
                 wrap = default :: atom()}).

-endif.
