ALTER TABLE pending_batches RESET (toast_tuple_target);
