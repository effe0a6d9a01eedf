"""realtime-orchestrator: Routes events to Supabase Realtime and push notifications."""
