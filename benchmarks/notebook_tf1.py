"""The seed notebook's own TensorFlow 1 code, run as-is through `tf.compat.v1`: the speed baseline.

Usage: TF_USE_LEGACY_KERAS=1 python benchmarks/notebook_tf1.py [--low-level] [--batches 800]
       [--time-eval 5]  # then times the notebook's validation evaluation, images/s

The network, the training loop, the logging cadence and the final evaluations are the
notebook's cells In[4]/In[5] (`tf.layers.batch_normalization`) or, with `--low-level`,
In[6]/In[7] (the hand-written batch norm), with only these changes: `tf.` becomes
`tf.compat.v1.` where TF 2 moved things, and the data comes from `keras_bn.load_mnist`
and a `next_batch` with TF1's semantics (`keras_bn.BatchFeeder`), since
`tensorflow.examples.tutorials` no longer exists. `tf.compat.v1.layers` needs the
`tf_keras` package and `TF_USE_LEGACY_KERAS=1`.
"""

import argparse
import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from keras_bn.notebook.feeder import BatchFeeder  # noqa: E402
from keras_bn.notebook.mnist import load_mnist  # noqa: E402

tf1 = tf.compat.v1


def conv_layer_high(previous_layer, layer_depth, is_training):
    """In[4]'s conv layer: tf.layers.conv2d without bias, then tf.layers.batch_normalization."""
    strides = 2 if layer_depth % 3 == 0 else 1
    conv = tf1.layers.conv2d(previous_layer, layer_depth * 4, 3, strides, "same", use_bias=False, activation=None)
    conv = tf1.layers.batch_normalization(conv, training=is_training)
    return tf.nn.relu(conv)


def fully_connected_high(previous_layer, number_of_units, is_training):
    """In[4]'s dense layer with tf.layers.batch_normalization."""
    layer = tf1.layers.dense(previous_layer, number_of_units, use_bias=False, activation=None)
    layer = tf1.layers.batch_normalization(layer, training=is_training)
    return tf.nn.relu(layer)


def _hand_written_bn(layer, channels, axes, is_training):
    """In[6]'s batch normalization: gamma, beta, population statistics and tf.cond."""
    gamma = tf1.Variable(tf.ones([channels]))
    beta = tf1.Variable(tf.zeros([channels]))
    population_mean = tf1.Variable(tf.zeros([channels]), trainable=False)
    population_variance = tf1.Variable(tf.ones([channels]), trainable=False)
    epsilon = 0.001

    def batch_normalization_training():
        batch_mean, batch_variance = tf.nn.moments(layer, axes, keepdims=False)
        decay = 0.99
        train_mean = tf1.assign(population_mean, population_mean * decay + batch_mean * (1 - decay))
        train_variance = tf1.assign(
            population_variance, population_variance * decay + batch_variance * (1 - decay)
        )
        with tf.control_dependencies([train_mean, train_variance]):
            return tf.nn.batch_normalization(layer, batch_mean, batch_variance, beta, gamma, epsilon)

    def batch_normalization_inference():
        return tf.nn.batch_normalization(layer, population_mean, population_variance, beta, gamma, epsilon)

    return tf.nn.relu(tf.cond(is_training, batch_normalization_training, batch_normalization_inference))


def conv_layer_low(previous_layer, layer_depth, is_training):
    """In[6]'s conv layer: tf.nn.conv2d with truncated-normal weights, hand-written BN."""
    strides = 2 if layer_depth % 3 == 0 else 1
    input_channels = previous_layer.get_shape().as_list()[3]
    output_channels = layer_depth * 4
    weights = tf1.Variable(tf1.truncated_normal((3, 3, input_channels, output_channels), stddev=0.05))
    layer = tf.nn.conv2d(previous_layer, weights, strides=(1, strides, strides, 1), padding="SAME")
    return _hand_written_bn(layer, output_channels, [0, 1, 2], is_training)


def fully_connected_low(previous_layer, number_of_units, is_training):
    """In[6]'s dense layer with the hand-written BN."""
    layer = tf1.layers.dense(previous_layer, number_of_units, use_bias=False, activation=None)
    return _hand_written_bn(layer, number_of_units, [0], is_training)


def train(mnist, number_of_batches, batch_size, learning_rate, low_level, time_eval=0):
    """The notebook's `train` with batch normalization, cadence and final evaluations included."""
    conv_layer = conv_layer_low if low_level else conv_layer_high
    fully_connected = fully_connected_low if low_level else fully_connected_high
    inputs = tf1.placeholder(tf.float32, (None, 28, 28, 1))
    labels = tf1.placeholder(tf.float32, (None, 10))
    is_training = tf1.placeholder(tf.bool)

    network = inputs
    for i in range(1, 20):
        network = conv_layer(network, layer_depth=i, is_training=is_training)
    original_shape = network.get_shape().as_list()
    network = tf.reshape(network, shape=(-1, original_shape[1] * original_shape[2] * original_shape[3]))
    network = fully_connected(network, 100, is_training)
    logits = tf1.layers.dense(network, 10)

    model_loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(logits=logits, labels=labels))
    with tf.control_dependencies(tf1.get_collection(tf1.GraphKeys.UPDATE_OPS)):
        train_optimizer = tf1.train.AdamOptimizer(learning_rate).minimize(model_loss)
    correct_prediction = tf.equal(tf.argmax(logits, 1), tf.argmax(labels, 1))
    accuracy = tf.reduce_mean(tf.cast(correct_prediction, tf.float32))

    feeder = BatchFeeder(mnist.train.images, mnist.train.labels, batch_size, seed=0)
    validation, test = mnist.validation, mnist.test
    with tf1.Session() as s:
        s.run(tf1.global_variables_initializer())
        for i in range(number_of_batches):
            batch_xs, batch_ys = feeder.next_batch()
            s.run(train_optimizer, feed_dict={inputs: batch_xs, labels: batch_ys, is_training: True})
            if i % 100 == 0:
                loss, acc = s.run(
                    [model_loss, accuracy],
                    feed_dict={inputs: validation.images, labels: validation.labels, is_training: False},
                )
                print(f"Batch: {i}, Validation loss: {loss}, Validation accuracy: {acc}")
            elif i % 25 == 0:
                loss, acc = s.run(
                    [model_loss, accuracy], feed_dict={inputs: batch_xs, labels: batch_ys, is_training: False}
                )
                print(f"Batch: {i}, Training loss: {loss}, Training accuracy: {acc}")
        acc = s.run(accuracy, feed_dict={inputs: validation.images, labels: validation.labels, is_training: False})
        print(f"Final validation accuracy: {acc}")
        acc = s.run(accuracy, feed_dict={inputs: test.images, labels: test.labels, is_training: False})
        print(f"Final test accuracy: {acc}")
        correct = 0.0
        for i in range(100):
            correct += s.run(
                accuracy, feed_dict={inputs: [test.images[i]], labels: [test.labels[i]], is_training: False}
            )
        print(f"Accuracy on 100 samples: {correct / 100}")
        feed = {inputs: validation.images, labels: validation.labels, is_training: False}
        for _ in range(time_eval):  # the cadence's evaluation, timed: one session.run
            started = time.perf_counter()
            s.run([model_loss, accuracy], feed_dict=feed)
            print(f"eval images/s: {len(validation.images) / (time.perf_counter() - started):.0f}")


def main():
    """Parses the arguments, loads MNIST and runs the notebook's training once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=0.002)
    parser.add_argument("--low-level", action="store_true", help="In[6]: the hand-written batch norm")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--time-eval", type=int, default=0, metavar="N",
                        help="after training, time N evaluations of the validation set")
    args = parser.parse_args()
    tf1.disable_eager_execution()
    tf1.set_random_seed(0)
    mnist = load_mnist(args.data_dir)
    started = time.perf_counter()
    with tf.Graph().as_default():
        train(mnist, args.batches, args.batch_size, args.learning_rate, args.low_level, args.time_eval)
    print(f"train() seconds: {time.perf_counter() - started:.1f}")


if __name__ == "__main__":
    main()
