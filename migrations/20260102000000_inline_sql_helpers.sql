-- The four small `language sql` helpers lose their fixed search_path so that PostgreSQL can
-- inline them into their callers. A function with a SET clause is never inlined: every call (one
-- per history row, for `soul_message_json`) goes through the function manager with a GUC save
-- and restore and parses and plans its body again. Their bodies are fully schema-qualified, and
-- every caller is one of our functions with `search_path = ''`, where they are inlined; called
-- directly, they run with the caller's own rights (security invoker), so a search_path the
-- caller controls gains it nothing. Measured in docs/performance.md: turn latency and 8-client
-- throughput both improve by a fifth or more. (Supabase's linter flags functions without a fixed
-- search_path; for these four that is a false positive.)
alter function public.soul_session_number(jsonb) reset all;
alter function public.soul_session_json(public.user_sessions) reset all;
alter function public.soul_message_json(public.messages) reset all;
alter function public.soul_ms(jsonb) reset all;
