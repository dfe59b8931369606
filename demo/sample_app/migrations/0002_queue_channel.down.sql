ALTER TABLE appointments_queue DROP COLUMN channel;
