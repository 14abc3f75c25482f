package bench;

import com.fasterxml.jackson.annotation.JsonIgnoreProperties;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.time.Duration;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Grouped;
import org.apache.kafka.streams.kstream.KTable;
import org.apache.kafka.streams.kstream.Materialized;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Suppressed;
import org.apache.kafka.streams.kstream.TimeWindows;
import org.apache.kafka.streams.kstream.Windowed;
import org.apache.kafka.streams.processor.StateRestoreListener;

/**
 * The benchmark's Kafka Streams programs.
 *
 * <pre>
 * watchlist BOOTSTRAP APP_ID INPUT OUTPUT GUARANTEE COMMIT_MS STATE_DIR
 * restore   BOOTSTRAP APP_ID INPUT -      -         -         STATE_DIR
 * windowed  BOOTSTRAP APP_ID INPUT OUTPUT every|final WINDOW_MS STATE_DIR
 * join      BOOTSTRAP APP_ID USERS OUTPUT CLICKS    -         STATE_DIR
 * </pre>
 *
 * <p>{@code windowed} counts per key in tumbling windows without grace, every update or (final)
 * suppressed until each window closes, at-least-once with 100 ms commits, and writes
 * {@code key@start} → {@code {"flag_count":n}} as the Rust side does. {@code join} reads USERS as a
 * table and joins each click with its user's row (inner), writing {@code {"user","page","company"}}.
 */
public final class Main {
  /** A user registration; every field is required, as in the Rust program. */
  @JsonIgnoreProperties(ignoreUnknown = false)
  public static final class User {
    public String email, credit_card_number, company_name, company_slogan, industry, user_name, avatar, name,
        profession, field, time_zone, user_agent, pack;
    public boolean premium;
    public long credit;
  }

  private static final ObjectMapper JSON = new ObjectMapper();

  /** JSON users; a record that does not parse becomes null and is filtered out. */
  static Serde<User> userSerde() {
    Serializer<User> ser = (topic, u) -> {
      try {
        return JSON.writeValueAsBytes(u);
      } catch (Exception e) {
        throw new RuntimeException(e);
      }
    };
    Deserializer<User> de = (topic, bytes) -> {
      try {
        return JSON.readValue(bytes, User.class);
      } catch (Exception e) {
        return null;
      }
    };
    return Serdes.serdeFrom(ser, de);
  }

  static String quote(String s) {
    try {
      return JSON.writeValueAsString(s);
    } catch (Exception e) {
      throw new RuntimeException(e);
    }
  }

  public static void main(String[] a) throws Exception {
    String mode = a[0], bootstrap = a[1], app = a[2], input = a[3], output = a[4], guarantee = a[5];
    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, app);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    p.put(StreamsConfig.STATE_DIR_CONFIG, a[7]);
    p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 0);
    p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, 1);
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    StreamsBuilder b = new StreamsBuilder();
    CountDownLatch restored = new CountDownLatch(1);
    long[] restoreWindow = {Long.MAX_VALUE, 0};
    AtomicLong restoredRecords = new AtomicLong();
    if (mode.equals("watchlist")) {
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
          guarantee.equals("exactly-once") ? StreamsConfig.EXACTLY_ONCE_V2 : StreamsConfig.AT_LEAST_ONCE);
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, Long.parseLong(a[6]));
      if (a.length > 8) {
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, Integer.parseInt(a[8]));
      }
      b.stream(input, Consumed.with(Serdes.String(), userSerde()))
          .filter((k, u) -> u != null && u.email.toLowerCase().contains("hotmail"))
          .map((k, u) -> KeyValue.pair(u.company_name, ""))
          .groupByKey(Grouped.with("watchlist-counts", Serdes.String(), Serdes.String()))
          .count(Materialized.as("watchlist-counts"))
          .toStream()
          .mapValues((company, n) -> "{\"team\":\"team-1\",\"company\":" + quote(company) + ",\"flag_count\":" + n + "}")
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else if (mode.equals("join")) {
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100L);
      KTable<String, String> users = b.table(input, Consumed.with(Serdes.String(), Serdes.String()),
          Materialized.as("users"));
      b.stream(guarantee, Consumed.with(Serdes.String(), Serdes.String()))
          .join(users, (page, company) -> new String[] {page, company})
          .map((user, pc) -> KeyValue.pair(user,
              "{\"user\":\"" + user + "\",\"page\":\"" + pc[0] + "\",\"company\":\"" + pc[1] + "\"}"))
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else if (mode.equals("windowed")) {
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100L);
      KTable<Windowed<String>, Long> counts = b.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
          .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
          .windowedBy(TimeWindows.ofSizeWithNoGrace(Duration.ofMillis(Long.parseLong(a[6]))))
          .count(Materialized.as("windowed-counts"));
      if (guarantee.equals("final")) {
        counts = counts.suppress(Suppressed.untilWindowCloses(Suppressed.BufferConfig.unbounded()));
      }
      counts.toStream()
          .map((w, n) -> KeyValue.pair(w.key() + "@" + w.window().start(), "{\"flag_count\":" + n + "}"))
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else if (mode.equals("keycount")) {
      // the key-scaling rows: count per key, every update to the output
      p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
      p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, 100L);
      b.stream(input, Consumed.with(Serdes.String(), Serdes.ByteArray()))
          .groupByKey(Grouped.with(Serdes.String(), Serdes.ByteArray()))
          .count(Materialized.as("counts"))
          .toStream()
          .mapValues(n -> Long.toString(n))
          .to(output, Produced.with(Serdes.String(), Serdes.String()));
    } else {
      b.stream(input, Consumed.with(Serdes.String(), Serdes.String()))
          .groupByKey(Grouped.with(Serdes.String(), Serdes.String()))
          .count(Materialized.as("counts"));
    }
    KafkaStreams streams = new KafkaStreams(b.build(), p);
    streams.setGlobalStateRestoreListener(new StateRestoreListener() {
      public synchronized void onRestoreStart(TopicPartition tp, String store, long start, long end) {
        restoreWindow[0] = Math.min(restoreWindow[0], System.nanoTime());
      }
      public void onBatchRestored(TopicPartition tp, String store, long end, long n) {
        restoredRecords.addAndGet(n);
      }
      public synchronized void onRestoreEnd(TopicPartition tp, String store, long total) {
        restoreWindow[1] = Math.max(restoreWindow[1], System.nanoTime());
      }
    });
    streams.setStateListener((now, before) -> {
      if (now == KafkaStreams.State.RUNNING && before == KafkaStreams.State.REBALANCING) {
        restored.countDown();
      }
    });
    Runtime.getRuntime().addShutdownHook(new Thread(streams::close));
    streams.start();
    if (mode.equals("restore")) {
      restored.await();
      double secs = restoreWindow[1] > restoreWindow[0] ? (restoreWindow[1] - restoreWindow[0]) / 1e9 : 0;
      System.out.printf("restored read=%d seconds=%.3f%n", restoredRecords.get(), secs);
      streams.close();
      System.exit(0);
    }
    Thread.currentThread().join();
  }
}
