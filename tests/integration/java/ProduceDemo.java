// Produces records to Kafka with the Java client from the broker's own jars, as real producers do.
//
//   java -cp <kafka-clients, its codec jars, these classes> ProduceDemo BOOTSTRAP TOPIC CODEC=FILE...
//
// For each CODEC=FILE, one producer with compression.type=CODEC (none, gzip, snappy, lz4, zstd)
// sends FILE's records: one a line, the key, a tab, the value (UTF-8). Prints "CODEC: acknowledged N"
// once every record of that file is acknowledged.

import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.Future;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public final class ProduceDemo {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: ProduceDemo BOOTSTRAP TOPIC CODEC=FILE...");
            System.exit(2);
        }
        for (int i = 2; i < args.length; i++) {
            String[] codecAndFile = args[i].split("=", 2);
            int count = produce(args[0], args[1], codecAndFile[0], Path.of(codecAndFile[1]));
            System.out.println(codecAndFile[0] + ": acknowledged " + count);
        }
    }

    private static int produce(String bootstrap, String topic, String codec, Path file) throws Exception {
        Properties props = new Properties();
        props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        props.put(ProducerConfig.ACKS_CONFIG, "all");
        // Several records per batch, so each batch is compressed as a whole, as under real load.
        props.put(ProducerConfig.LINGER_MS_CONFIG, "20");
        // A topic that does not exist fails the test in seconds, not after a minute per record.
        props.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, "15000");
        props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

        List<Future<RecordMetadata>> sent = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(props)) {
            for (String line : Files.readAllLines(file, StandardCharsets.UTF_8)) {
                int tab = line.indexOf('\t');
                byte[] key = line.substring(0, tab).getBytes(StandardCharsets.UTF_8);
                byte[] value = line.substring(tab + 1).getBytes(StandardCharsets.UTF_8);
                sent.add(producer.send(new ProducerRecord<>(topic, key, value)));
            }
            producer.flush();
            for (Future<RecordMetadata> ack : sent) {
                ack.get();
            }
        }
        return sent.size();
    }
}
