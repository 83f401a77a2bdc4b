-- A folder's synchronisation state beyond UIDs: Microsoft Graph's delta
-- link, saved once every item it listed is copied or recorded.
ALTER TABLE folder_checkpoints ADD COLUMN sync_state TEXT;
