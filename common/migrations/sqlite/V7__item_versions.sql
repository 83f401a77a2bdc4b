-- The versions of a copied item (Graph: change keys): the source item's
-- when it was copied, and the copy's as the target last answered. A later
-- listing of the source item with another version updates the copy.
ALTER TABLE ledger ADD COLUMN source_version TEXT;
ALTER TABLE ledger ADD COLUMN target_version TEXT;
ALTER TABLE intents ADD COLUMN source_version TEXT;
ALTER TABLE intents ADD COLUMN target_version TEXT;
