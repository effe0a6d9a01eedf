// The page's copy of supabase-js, as an app would bundle it: `supabase.createClient`.
export { createClient } from "@supabase/supabase-js";
