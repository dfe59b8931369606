ALTER TABLE appointments_queue ADD COLUMN channel TEXT NOT NULL DEFAULT 'wechat';
