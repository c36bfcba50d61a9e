-- The codec headers (sha256 of the SPS/PPS) a rendition's chunks must have: those
-- of the first chunk that passed its checks, claimed at that check, on every chunk
-- task of the rendition (NULL: none yet). Two chunks checked at once with different
-- headers cannot both pass, as they could when only accepted chunks were compared
-- (`Queue::claim_chunk_headers`).
ALTER TABLE tasks ADD COLUMN chunk_headers TEXT;
